"""How much memory QLoRA training takes: an estimate from the model config, and the measured peak.

``estimate(shape, settings)`` adds up, in bytes, what is alive at the peak of a training step of the course's
pipeline (``load_model_4bit``, then TRL's SFTTrainer with LoRA on the seven projections, padding-free batches):

- weights: with NF4 the seven projections of every layer take ``NF4_BITS_PER_PARAM`` = 4.127 bits (4-bit codes,
  an 8-bit absmax per 64 weights, a fp32 constant per 256 absmax); embeddings, norms, biases and an untied
  ``lm_head`` are fp32 on CPU (``prepare_model_for_kbit_training`` casts every non-4-bit parameter to fp32) and in
  the compute dtype on a GPU (lesson 03's load cell casts the frozen ones back, as LLaMA-Factory keeps them;
  ``upcast_frozen=True`` describes runs that kept fp32). With ``16bit`` / ``32bit`` every parameter has that width.
- LoRA: ``r * (in + out)`` parameters per projection (bf16 on a quantized model trained in bf16, fp32 otherwise),
  gradients of the same size, and optimizer states: AdamW keeps 2 states in the parameters' dtype, paged 8-bit
  AdamW 2 bytes per parameter.
- activations, saved for backward. With checkpointing: every layer's input (``layers * tokens * hidden`` values
  of the residual stream, in the embeddings' dtype). Without: every layer's saved tensors,
  per token (measured with ``torch.autograd.graph.saved_tensors_hooks`` on SmolLM2 in fp32 and bf16):
  the two norm inputs (2h, residual dtype); the LoRA inputs, 5h for q/k/v/gate/up, h for o_proj and i for
  down_proj in LoRA dtype (shared with their source when the dtypes agree); q, k, v and the attention output
  (2h + 2 kv_heads head_dim, compute dtype: ``helpers.attention`` runs causal sdpa on each packed sample, so no
  layer keeps a mask or k and v repeated to all heads); gate, up and silu(gate)
  (3i, residual dtype: bnb returns its input's dtype); the 7 LoRA A outputs (7r); with LoRA dropout one more copy
  of every LoRA input (7h + i). Both add the head's input (h), the boolean mask (tokens^2 bytes) and rotary cos/sin.
- on a GPU, what the H200 runs held beyond these parts, fitted to them (``GPU_WORKSPACE``, ``GPU_RESIDUAL_COPIES``,
  ``GPU_MASK_BYTES``, and a bf16 copy of an fp32 untied ``lm_head``): with them the estimate is 0-10% above every
  committed measured peak (``tests/test_memory.py`` reads ``benchmarks/results/gpu-*.json``).
- transient, the largest short-lived working set: the loss head and, with checkpointing, one recomputed layer
  plus its gradients, whichever is larger; plus one dequantized projection. TRL scores the vocabulary in tiles of
  ``min(tokens, 4096) x 32768`` logits: one tile in compute dtype on a GPU (its Triton kernel works in place); on
  CPU its torch fallback peaks at 8.26 fp32 tiles (measured on the kernel alone). Without TRL
  (``chunked_loss=False``) the whole ``tokens x vocab`` logits exist, in compute dtype plus a fp32 copy and its
  fp32 gradient: often the peak.
- overhead: on a GPU the CUDA context and allocator slack (``CUDA_OVERHEAD``, outside ``max_memory_allocated``);
  on CPU the BLAS workspace the loss head's first backward leaves allocated (``CPU_OVERHEAD``, measured), not the
  interpreter and libraries: ``benchmarks/memory.py`` compares the RSS increase of training steps.

``fit_table()`` answers "does it fit on 24 / 48 / 80 GB" for the course's models and GPU recipes
(``python -m helpers.memory``); ``helpers.measure`` measures real peaks.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, replace

from helpers.models import MODELS, ModelShape
from helpers.profiles import GPU_RECIPES, Recipe

GIB = 2**30
NF4_BITS_PER_PARAM = 4 + 8 / 64 + 32 / (64 * 256)  # = 4.127
CUDA_OVERHEAD = int(0.75 * GIB)  # CUDA context (~500 MiB) plus allocator fragmentation: not in max_memory_allocated
# Fitted to the H200 runs (benchmarks/results/gpu-nvidia-h200.json; tests/test_memory.py checks every one):
GPU_WORKSPACE = 128 * 2**20  # a constant the allocator counted beyond the parts (cuBLAS workspaces and the like)
GPU_RESIDUAL_COPIES = 6  # residual-stream-sized tensors per token around the recomputed layer, beyond the 2 counted
GPU_MASK_BYTES = 4  # bytes per element of a packed row's tokens x tokens mask: the boolean one and sdpa's own copies
LOGIT_TILE = (4096, 32768)  # TRL's chunked log-prob kernel: tokens x vocabulary columns per tile
# That kernel's torch fallback on CPU, measured alone (15-4096 tokens, vocabulary 32k-98k, hidden 576-1152): its
# backward peaks at 8.26 fp32 tiles' worth per token row, and its first backward in a process keeps 282 MiB more.
CPU_LOGIT_TILES = 8.26
CPU_OVERHEAD = 282 * 2**20
GPU_SIZES_GB = (24, 48, 80)


# Not a course model (helpers.models): the fit table's last row, to show where one 80 GB card ends.
QWEN_72B_ID = "Qwen/Qwen2.5-72B-Instruct"
QWEN_72B = ModelShape(8192, 29568, 80, 64, 8, 128, 152064, False, True)
# LoRA on a 4-bit base (the course) against LoRA on a 16-bit base, everything else the same.
METHODS = {"QLoRA 4-bit": "nf4", "LoRA 16-bit": "16bit"}


@dataclass(frozen=True)
class Settings:
    """How the model is trained: weight format, dtypes, LoRA, optimizer, batch, checkpointing and device."""

    weights: str = "nf4"  # "nf4", "16bit" or "32bit"
    compute_bytes: int = 2  # 2: bf16 / fp16 on a GPU, 4: fp32 (CPU)
    lora_r: int = 8
    lora_dropout: float = 0.0
    optimizer: str = "paged_adamw_8bit"  # or "adamw"
    batch_size: int = 1
    length: int = 512  # tokens per row; a padding-free batch holds at most batch_size * length tokens
    checkpointing: bool = True
    chunked_loss: bool = True  # TRL's SFTTrainer; False: plain transformers materializes the logits
    gpu: bool = True
    # True: every frozen non-4-bit weight (embeddings, lm_head, norms) keeps prepare_model_for_kbit_training's fp32,
    # as on CPU and on GPUs before 2026-12-04; False: cast back to the compute dtype (lesson 03's load cell on a GPU)
    upcast_frozen: bool = False

    @classmethod
    def for_recipe(cls, recipe: Recipe, gpu: bool = True) -> Settings:
        """The course's pipeline for a recipe: NF4, bf16 and paged 8-bit AdamW on a GPU, fp32 and AdamW on CPU."""
        return cls(compute_bytes=2 if gpu else 4, lora_r=recipe.lora_r, lora_dropout=recipe.lora_dropout,
                   optimizer="paged_adamw_8bit" if gpu else "adamw", batch_size=recipe.batch_size,
                   length=recipe.cutoff, checkpointing=recipe.checkpointing, gpu=gpu)

    @property
    def tokens(self) -> int:
        return self.batch_size * self.length

    @property
    def residual_bytes(self) -> int:
        """Embeddings, norms and the residual stream: fp32 on CPU or when upcast, else the compute dtype."""
        if self.weights == "nf4":
            return 4 if self.upcast_frozen or self.compute_bytes == 4 else self.compute_bytes
        return {"16bit": 2, "32bit": 4}[self.weights]

    @property
    def lora_bytes(self) -> int:
        """bf16 on a quantized model trained in bf16 (TRL's cast, kept by ``make_trainer``); fp32 otherwise."""
        return 2 if self.weights == "nf4" and self.compute_bytes == 2 else 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of a training step's peak."""

    weights: int
    lora: int
    gradients: int
    optimizer: int
    activations: int
    transient: int
    overhead: int

    @property
    def total(self) -> int:
        return sum(astuple(self))


def lora_parameters(shape: ModelShape, r: int) -> int:
    """LoRA parameters on all seven projections: ``r * (in + out)`` each, in every layer."""
    return shape.num_hidden_layers * sum(r * (n_in + n_out) for n_in, n_out in shape.projections())


def weight_bytes(shape: ModelShape, settings: Settings) -> int:
    """Bytes of the base model's weights in the chosen format."""
    h, layers = shape.hidden_size, shape.num_hidden_layers
    projected = layers * sum(n_in * n_out for n_in, n_out in shape.projections())
    embeddings = shape.vocab_size * h * (1 if shape.tie_word_embeddings else 2)
    norms = (2 * layers + 1) * h
    biases = layers * (shape.num_attention_heads + 2 * shape.num_key_value_heads) * shape.head_dim
    others = embeddings + norms + (biases if shape.attention_bias else 0)
    if settings.weights == "nf4":
        return int(projected * NF4_BITS_PER_PARAM / 8) + others * settings.residual_bytes
    return (projected + others) * settings.residual_bytes


def layer_activation_bytes(shape: ModelShape, settings: Settings) -> int:
    """Bytes one decoder layer saves for backward for the whole batch (see the module docstring)."""
    h, i, r = shape.hidden_size, shape.intermediate_size, settings.lora_r
    res, comp, lora = settings.residual_bytes, settings.compute_bytes, settings.lora_bytes
    kv = shape.num_key_value_heads * shape.head_dim  # packed_sdpa: causal sdpa per sample, no mask, no repeated k/v
    lora_inputs = (2 * h * res if lora == res else 5 * h * lora) + (0 if lora == comp else h * lora) + i * lora
    dropout = (7 * h + i) * lora if settings.lora_dropout > 0 else 0
    attention = (2 * h + 2 * kv) * comp + 4 * shape.num_attention_heads  # q, k, v, output; fp32 logsumexp
    mlp = 3 * i * res  # gate, up, silu(gate); their product is down_proj's LoRA input
    per_token = 2 * h * res + 8 + lora_inputs + dropout + attention + mlp + 7 * r * lora
    return settings.tokens * per_token


def loss_head_bytes(shape: ModelShape, settings: Settings) -> int:
    """Short-lived bytes of the loss over the vocabulary (chunked by TRL, or whole logits)."""
    tokens, vocab = settings.tokens, shape.vocab_size
    if not settings.chunked_loss:
        return tokens * vocab * (settings.compute_bytes + 4 + 4)
    tile = min(tokens, LOGIT_TILE[0]) * min(vocab, LOGIT_TILE[1])
    tiles = tile * settings.compute_bytes if settings.gpu else int(CPU_LOGIT_TILES * tile * 4)
    return tiles + tokens * shape.hidden_size * 4  # plus the fp32 gradient of the head's input


def estimate(shape: ModelShape, settings: Settings) -> MemoryEstimate:
    """What a training step's peak holds, part by part."""
    tokens, res, h = settings.tokens, settings.residual_bytes, shape.hidden_size
    lora = lora_parameters(shape, settings.lora_r)
    state_bytes = 2 if settings.optimizer == "paged_adamw_8bit" else 2 * settings.lora_bytes
    layer = layer_activation_bytes(shape, settings)
    shared = tokens * (h * res + 2 * shape.head_dim * 4)  # head input, rotary cos / sin
    # packed rows: a block-diagonal boolean mask (1 byte per element); on a GPU more copies (GPU_MASK_BYTES, fitted)
    mask = tokens**2 * (GPU_MASK_BYTES if settings.gpu else 1) if settings.batch_size > 1 else 0
    copies = 2 + (GPU_RESIDUAL_COPIES if settings.gpu else 0)  # residual-stream tensors around a recomputed layer
    if settings.checkpointing:
        stored = shape.num_hidden_layers * tokens * h * res
        busiest = max(loss_head_bytes(shape, settings), layer + copies * tokens * h * res)
    else:
        stored, busiest = shape.num_hidden_layers * layer, loss_head_bytes(shape, settings)
    dequantized = max(n_in * n_out for n_in, n_out in shape.projections()) * settings.compute_bytes
    return MemoryEstimate(
        weights=weight_bytes(shape, settings),
        lora=lora * settings.lora_bytes,
        gradients=lora * settings.lora_bytes,
        optimizer=lora * state_bytes,
        activations=stored + shared + mask,
        transient=busiest + (dequantized if settings.weights == "nf4" else 0) + gpu_extra_bytes(shape, settings),
        overhead=CUDA_OVERHEAD if settings.gpu else CPU_OVERHEAD,
    )


def gpu_extra_bytes(shape: ModelShape, settings: Settings) -> int:
    """What the H200 runs held beyond the parts above: cuBLAS workspaces, and a bf16 copy of an fp32 untied head."""
    if not settings.gpu:
        return 0
    upcast_head = settings.upcast_frozen and not shape.tie_word_embeddings and settings.compute_bytes == 2
    return GPU_WORKSPACE + (shape.vocab_size * shape.hidden_size * 2 if upcast_head else 0)


def fit_table_models() -> dict[str, ModelShape]:
    """The fit table's rows: the course's models for a GPU (helpers.models, without the tiny one), then 72B."""
    return {**{model_id: model.shape for model_id, model in MODELS.items() if "SmolLM2" not in model_id},
            QWEN_72B_ID: QWEN_72B}


def fit_table(lesson: str = "nekoqa", models: dict[str, ModelShape] | None = None) -> str:
    """Estimated GPU memory of each model with QLoRA and with 16-bit LoRA, and whether it fits on 24 / 48 / 80 GB.

    Each model trains ``lesson``'s gpu recipe (default NekoQA, the course's longest rows) at its micro-batch, every
    row at the cutoff (the cost tables of ``helpers.cost`` split the batch per card and use the rows' lengths).
    """
    models = models or fit_table_models()
    sizes = "".join(f"{size:>6} GB" for size in GPU_SIZES_GB)
    lines = [f"{'模型 / model':<30}{'批 / batch':>8}  {'方法 / method':<14}{'GiB':>7}{sizes}"]  # 2 wide chars each
    for name, shape in models.items():
        recipe = GPU_RECIPES[lesson]
        settings = Settings.for_recipe(recipe)
        for method, weights in METHODS.items():
            total = estimate(shape, replace(settings, weights=weights)).total
            fits = "".join(f"{'✓' if total <= size * GIB else '✗':>9}" for size in GPU_SIZES_GB)
            batch = f"{recipe.batch_size}x{recipe.grad_accum}"
            lines.append(f"{name.rsplit('/', 1)[-1]:<32}{batch:>8}  {method:<16}{total / GIB:>7.1f}{fits}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(fit_table())

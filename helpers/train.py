"""QLoRA training on TRL's SFTTrainer, with the current APIs (transformers 5, trl 1.x, peft 0.21).

Old tutorials call ``SFTTrainer(tokenizer=..., max_seq_length=..., dataset_text_field=...)``;
today the tokenizer is ``processing_class=`` and lengths live in ``SFTConfig(max_length=...)``.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import bitsandbytes as bnb
import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from helpers.attention import fastest_attention
from helpers.hardware import compute_dtype, device
from helpers.models import ModelShape
from helpers.profiles import LORA_TARGET_MODULES, Profile, Recipe
from helpers.templates import IGNORE_INDEX

# peft 0.21 still reads the attribute transformers 5 renamed; the warning is theirs, not a student's problem.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

# The padding SFTTrainer applies to our rows (labels padded with -100), reused for held-out loss.
_PAD_LIKE_TRAINING = DataCollatorForLanguageModeling(pad_token_id=0)


def quantization_config(dtype: torch.dtype) -> BitsAndBytesConfig:
    """NF4 weights with double quantization; matmuls run in ``dtype`` (the QLoRA recipe)."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype,  # same container dtype as the rest: needed for DeepSpeed ZeRO-3 sharding
    )


def lora_config(recipe: Recipe, target_modules: tuple[str, ...] | str = LORA_TARGET_MODULES) -> LoraConfig:
    """LoRA on ``target_modules``: by default all seven projections of each block (q/k/v/o, gate/up/down).

    Pass ``profile.lora_targets``: the table's modules for a known model, ``"all-linear"`` for any other.
    """
    return LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )


def sft_config(recipe: Recipe, output_dir: Path, dtype: torch.dtype, seed: int) -> SFTConfig:
    """Trainer settings: checkpoints every ``save_steps`` (keep 2) so an interrupted run resumes."""
    return SFTConfig(
        output_dir=str(output_dir),
        # Padding-free: a batch's rows are concatenated into one row whose position_ids restart at 0 for each, so
        # no compute goes to padding and rows never attend to each other (benchmarks/pipeline.py, test_packing.py).
        padding_free=True,
        max_length=None,  # TRL refuses it without packing; encode_conversations already cut rows to recipe.cutoff
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=recipe.warmup_steps,
        max_steps=recipe.max_steps,
        logging_steps=1,
        save_steps=recipe.save_steps,
        save_total_limit=2,
        activation_checkpointing=True,  # a.k.a. gradient checkpointing: recompute activations, save memory
        bf16=dtype is torch.bfloat16,
        fp16=dtype is torch.float16,
        use_cpu=not torch.cuda.is_available(),
        optim="paged_adamw_8bit" if torch.cuda.is_available() else "adamw_torch",
        report_to="none",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def load_model_4bit(model_dir: Path, profile: Profile, attn_implementation: str | None = None) -> AutoModelForCausalLM:
    """Load the base model quantized to NF4 and ready for k-bit training (attention: ``fastest_attention()``)."""
    dtype = compute_dtype(profile)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quantization_config(dtype), dtype=dtype,
        attn_implementation=attn_implementation or fastest_attention(),
        device_map={"": PartialState().local_process_index if device().type == "cuda" else "cpu"},  # DDP: GPU per rank
    )
    # Casts norms to fp32; input grads let activation checkpointing work on a frozen base
    # (without them: "element 0 of tensors does not require grad"). The trainer turns checkpointing on.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model.enable_input_require_grads()
    keep_nf4_layout_for_training(model)
    return model


def keep_nf4_layout_for_training(model) -> None:
    """Stop bitsandbytes repacking NF4 weights for CPU inference, which breaks training afterwards.

    On a CPU with AVX512-BF16, the first forward in eval mode without gradients (``heldout_loss`` before training)
    rewrites every ``Linear4bit`` weight into a CPU inference layout and leaves it there; the training steps that
    follow then compute wrong gradients (bitsandbytes 0.50.2: the first step's gradient norm fell from 0.79 to 0.13
    on the tiny model; ``tests/test_nf4_layout.py``). GPUs never take that path.
    """
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def to_dataset(encoded: list[dict[str, list[int]]]) -> Dataset:
    """Pre-tokenized rows; SFTTrainer uses our ``labels`` column as is."""
    return Dataset.from_list(encoded)


class LossPlot(TrainerCallback):
    """Collects logged values (the training loss by default) and redraws a plot in the notebook as training goes."""

    def __init__(self, title: str, live: bool = True, keys: tuple[str, ...] = ("loss",)) -> None:
        self.title, self.live, self.keys = title, live, keys
        self.steps: list[int] = []
        self.values: dict[str, list[float]] = {key: [] for key in keys}
        self._handle = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and all(key in logs for key in self.keys):
            self.steps.append(state.global_step)
            for key in self.keys:
                self.values[key].append(float(logs[key]))
            if self.live:
                self._redraw()

    def figure(self):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        for key in self.keys:
            ax.plot(self.steps, self.values[key], marker="o", label=key)
        ax.set(title=self.title, xlabel="step", ylabel="training loss" if self.keys == ("loss",) else "value")
        if len(self.keys) > 1:
            ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        plt.close(fig)
        return fig

    def _redraw(self) -> None:
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return
        if get_ipython() is None:
            return
        if self._handle is None:
            self._handle = display(self.figure(), display_id=True)
        else:
            self._handle.update(self.figure())


class LoraTargetError(ValueError):
    """A LoRA target module that names no layer of the model; the message lists the layers there are."""


def linear_layer_names(model) -> list[str]:
    """The distinct last names of the model's linear layers: what ``target_modules`` can name."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear)})


def check_lora_targets(model, target_modules) -> None:
    """Fail before training when a target names no module (peft skips such a name when another one matches)."""
    if target_modules is None or target_modules == "all-linear":
        return
    names = [name for name, _ in model.named_modules()]
    if isinstance(target_modules, str):  # peft reads a single string as a regular expression on the full name
        missing = [] if any(re.fullmatch(target_modules, name) for name in names) else [target_modules]
    else:
        missing = sorted(t for t in target_modules if not any(n == t or n.endswith(f".{t}") for n in names))
    if missing:
        known = ", ".join(linear_layer_names(model))
        raise LoraTargetError(
            f"LoRA 目标模块 {missing} 在这个模型里不存在。它的线性层有：{known}。请从中选择 target_modules。\n"
            f"LoRA target modules {missing} are not in this model. Its linear layers are: {known}; "
            "choose target_modules from these."
        )


def make_trainer(model, tokenizer, train_rows: list[dict], lora: LoraConfig, args: SFTConfig,
                 callbacks: list[TrainerCallback] = ()) -> SFTTrainer:
    """An SFTTrainer with a tqdm progress bar instead of the notebook's HTML table."""
    check_lora_targets(model, lora.target_modules)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_dataset(train_rows),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=list(callbacks),
    )
    adapters_in_training_dtype(trainer)
    return with_tqdm(trainer)


def adapters_in_training_dtype(trainer) -> None:
    """Keep TRL's bf16 cast of the trainable (LoRA) weights only when training runs in bf16; else use fp32.

    On a quantized model TRL casts them to bf16, as the QLoRA paper does on GPUs. On CPU the course computes in fp32:
    there bf16 matmuls are ~50x slower (the rank-8 LoRA matmuls took half of every tiny step). Under fp16 mixed
    precision the optimizer needs fp32 weights as well.
    """
    if trainer.args.bf16:
        return
    for param in trainer.model.parameters():
        if param.requires_grad:
            param.data = param.data.float()


def with_tqdm(trainer):
    """Swap the notebook's HTML progress table (which nbval cannot compare) for a tqdm bar."""
    for callback in list(trainer.callback_handler.callbacks):  # by name: importing its module needs IPython
        if type(callback).__name__ == "NotebookProgressCallback":
            trainer.remove_callback(callback)
    if not any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.add_callback(ProgressCallback)
    return trainer


def checkpoint_step(folder: Path) -> int:
    """The N of a ``checkpoint-N`` folder."""
    return int(folder.name.rsplit("-", 1)[-1])


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of a run, in step order."""
    found = Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
    return sorted((p for p in found if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()), key=checkpoint_step)


def checkpoint_is_complete(folder: Path) -> bool:
    """The Trainer writes trainer_state.json last (after weights, optimizer, scheduler, RNG): readable means done."""
    try:
        json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def unfinished_checkpoint(output_dir: str | Path, max_steps: int) -> str | None:
    """The last complete checkpoint of an interrupted run, or None when there is none or the run had finished."""
    for folder in reversed(checkpoints(output_dir)):
        if checkpoint_is_complete(folder):
            return str(folder) if checkpoint_step(folder) < max_steps else None
        print(f"跳过没写完的检查点 {folder.name}（保存时训练被中断）/ "
              f"skipping {folder.name}: the run stopped while it was being written")
    return None


def train(trainer: SFTTrainer, lesson: str = "nekoqa", recipe: Recipe | None = None) -> None:
    """Train, resuming an interrupted run from its last checkpoint (a finished run trains anew).

    A CUDA out-of-memory becomes ``helpers.cost.MemoryFitError``: what to lower for ``lesson``'s ``recipe``, and
    the last complete checkpoint, from which the next run resumes.
    """
    resume = unfinished_checkpoint(trainer.args.output_dir, trainer.args.max_steps)
    if resume:
        print(f"从检查点继续训练 / resuming from {Path(resume).name}")
    try:
        trainer.train(resume_from_checkpoint=resume)
    except torch.OutOfMemoryError as error:
        from helpers.cost import out_of_memory_error  # helpers.cost imports the data helpers, which import this

        args = trainer.args
        checkpoint = unfinished_checkpoint(args.output_dir, args.max_steps)
        raise out_of_memory_error(lesson, recipe, ModelShape.from_config(trainer.model.config), checkpoint) from error


def logged_losses(trainer: SFTTrainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@torch.no_grad()
def completion_logprobs(model, rows: list[dict[str, list[int]]], batch_size: int = 8) -> list[float]:
    """Each row's summed log-probability of its learned tokens (labels != -100), padded as in training."""
    model.eval()
    sums = []
    for start in range(0, len(rows), batch_size):
        padded = _PAD_LIKE_TRAINING(rows[start : start + batch_size])
        logits = model(input_ids=padded["input_ids"].to(model.device),
                       attention_mask=padded["attention_mask"].to(model.device)).logits.float()
        labels = padded["labels"][:, 1:].to(logits.device)  # token t is predicted from the tokens before it
        learned = labels != IGNORE_INDEX
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        sums.extend((picked * learned).sum(dim=1).tolist())
    return sums


def heldout_loss(model, rows: list[dict[str, list[int]]], batch_size: int = 8) -> float:
    """Mean cross-entropy per learned token over ``rows`` (token-weighted, not row-weighted)."""
    learned = sum(label != IGNORE_INDEX for row in rows for label in row["labels"][1:])
    return -sum(completion_logprobs(model, rows, batch_size)) / learned


@torch.no_grad()
def generate_ids(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int) -> list[list[int]]:
    """Greedy new-token ids for a batch of conversations (left-padded, so every prompt ends at the same column)."""
    model.eval()
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=False).to(model.device)
    output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
    return output[:, batch["input_ids"].shape[1]:].tolist()


def generate_replies(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
    """Greedy replies for a batch of conversations."""
    return tokenizer.batch_decode(generate_ids(model, tokenizer, conversations, max_new_tokens),
                                  skip_special_tokens=True)

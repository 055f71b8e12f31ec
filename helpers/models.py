"""The models the course knows, and how ``COURSE_MODEL`` chooses one.

``COURSE_MODEL`` (or ``--model`` on the scripts, or ``MODEL`` near the top of a notebook) takes a model id from
either hub or a local folder. A model in ``MODELS`` brings its ModelScope and Hugging Face ids, LLaMA-Factory template,
LoRA targets and shape (the numbers of its config.json that decide memory: ``helpers.cost.plan_batch`` splits a
recipe's rows into micro-batches that fit the card from them). Any other model works when its tokenizer has a chat
template: LoRA then goes on all its linear layers (peft's ``"all-linear"``).

The hub ids were taken from the hubs' public pages; this table was written on machines without hub access.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path

MODEL_ENV = "COURSE_MODEL"
MODEL_HELP = "模型 id 或本地文件夹（默认 COURSE_MODEL）/ a model id or folder (default: $COURSE_MODEL)"
# LoRA on all seven projections of each block: attention q/k/v/o and MLP gate/up/down.
SEVEN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALL_LINEAR = "all-linear"  # peft: every linear layer except the output head


class ModelChoiceError(ValueError):
    """A model the course cannot train as chosen; the message says what to choose instead."""


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only model's config that decide its memory."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = False  # Qwen2 has biases on q/k/v

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From a transformers config (``AutoConfig.from_pretrained(folder)``), its dict, or a model folder."""
        if isinstance(config, (str, Path)):
            config = json.loads((Path(config) / "config.json").read_text(encoding="utf-8"))
        values = config if isinstance(config, dict) else config.to_dict()
        values = {**values, **values.get("text_config", {})}  # multimodal configs nest the language model's
        shape = {f.name: values[f.name] for f in fields(cls) if f.name in values}
        shape["head_dim"] = values.get("head_dim") or values["hidden_size"] // values["num_attention_heads"]
        shape.setdefault("num_key_value_heads", values["num_attention_heads"])
        shape.setdefault("tie_word_embeddings", False)
        shape.setdefault("attention_bias", values.get("model_type") == "qwen2")
        return cls(**shape)

    def parameters(self) -> int:
        """All parameters: embeddings (and an untied head), the seven projections, norms and q/k/v biases."""
        h, layers = self.hidden_size, self.num_hidden_layers
        projections = layers * sum(n_in * n_out for n_in, n_out in self.projections())
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        biases = layers * (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim
        return projections + embeddings + (2 * layers + 1) * h + (biases if self.attention_bias else 0)

    def projections(self) -> list[tuple[int, int]]:
        """(in, out) features of q, k, v, o, gate, up and down in one layer."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]


@dataclass(frozen=True)
class KnownModel:
    """A model of the course's table: where to download it, its shape, LLaMA-Factory's template, where LoRA goes."""

    hf_id: str
    modelscope_id: str
    llamafactory_template: str  # LLaMA-Factory's template name for it (lesson 10's YAMLs)
    shape: ModelShape
    gated: bool = False  # Hugging Face asks for the licence to be accepted before downloading
    lora_targets: tuple[str, ...] = SEVEN_PROJECTIONS

    @property
    def name(self) -> str:
        """The id without its organisation: ``Qwen2.5-7B-Instruct``."""
        return self.hf_id.rsplit("/", 1)[-1]


# Shapes: the models' config.json numbers.
MODELS: dict[str, KnownModel] = {
    model.hf_id: model
    for model in (
        KnownModel("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2",
                   ModelShape(576, 1536, 30, 9, 3, 64, 49152, True)),
        KnownModel("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "qwen",
                   ModelShape(896, 4864, 24, 14, 2, 64, 151936, True, True)),
        KnownModel("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "qwen",
                   ModelShape(1536, 8960, 28, 12, 2, 128, 151936, True, True)),
        KnownModel("meta-llama/Llama-3.2-3B-Instruct", "LLM-Research/Llama-3.2-3B-Instruct", "llama3",
                   ModelShape(3072, 8192, 28, 24, 8, 128, 128256, True), gated=True),
        KnownModel("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "qwen",
                   ModelShape(3584, 18944, 28, 28, 4, 128, 152064, False, True)),
        KnownModel("meta-llama/Llama-3.1-8B-Instruct", "LLM-Research/Meta-Llama-3.1-8B-Instruct", "llama3",
                   ModelShape(4096, 14336, 32, 32, 8, 128, 128256, False), gated=True),
        # The [INST] <<SYS>> template of the NekoQA and Tang (NTU GenAI HW5) tutorials' Llama-2 chat models.
        KnownModel("meta-llama/Llama-2-7b-chat-hf", "modelscope/Llama-2-7b-chat-ms", "llama2",
                   ModelShape(4096, 11008, 32, 32, 32, 128, 32000, False), gated=True),
    )
}


def find_model(name: str) -> KnownModel | None:
    """The table's entry for its Hugging Face or ModelScope id, a bare name, or a local folder of that name.

    Another organisation's id (``unsloth/Llama-3.2-3B-Instruct``) is not the table's model: None.
    """
    name = name.strip().rstrip("/")
    for model in MODELS.values():
        if name.lower() in {model.hf_id.lower(), model.modelscope_id.lower()}:
            return model
    if "/" in name and not Path(name).expanduser().is_dir():
        return None
    wanted = Path(name).name.split("--")[-1].lower()  # download_model's folders are named org--name
    return next((model for model in MODELS.values()
                 if wanted in {model.hf_id.rsplit("/", 1)[-1].lower(), model.modelscope_id.rsplit("/", 1)[-1].lower()}),
                None)


def chosen_model() -> str | None:
    """The model named by ``COURSE_MODEL``, or None."""
    return os.environ.get(MODEL_ENV, "").strip() or None


def lora_targets(model_id: str) -> tuple[str, ...] | str:
    """The LoRA target modules for a model: the table's, else every linear layer (said in one line)."""
    known = find_model(model_id)
    if known:
        return known.lora_targets
    _say_all_linear(model_id)
    return ALL_LINEAR


@cache
def _say_all_linear(model_id: str) -> None:
    print(f"{model_id} 不在课程的模型表里：LoRA 加在它的全部线性层上 / not in the course's table: "
          f"LoRA goes on all its linear layers (target_modules={ALL_LINEAR!r})")


def hub_ids(model_id: str) -> dict[str, str]:
    """The id to ask each hub for: the table's ModelScope and Hugging Face ids, else ``model_id`` on both."""
    known = find_model(model_id)
    if known and not Path(model_id).expanduser().is_dir():
        return {"ModelScope": known.modelscope_id, "Hugging Face": known.hf_id}
    return {"ModelScope": model_id, "Hugging Face": model_id}


def gated_hint(model_id: str) -> str:
    """What to do when Hugging Face refuses a gated model (Llama), or "" for other models."""
    known = find_model(model_id)
    if not known or not known.gated:
        return ""
    return (
        f"  {known.hf_id} 在 Hugging Face 上需要先申请授权：在 https://huggingface.co/{known.hf_id} 页面同意许可，"
        f"再 `hf auth login`；或直接用 ModelScope 镜像 {known.modelscope_id}（不需要申请）。\n"
        f"  {known.hf_id} is gated on Hugging Face: accept its licence at https://huggingface.co/{known.hf_id} and "
        f"run `hf auth login`, or use the ModelScope copy {known.modelscope_id} (no request needed)."
    )


def has_chat_template(model_dir: Path) -> bool:
    """True when the tokenizer in ``model_dir`` carries a chat template (in its config or a template file)."""
    if any((model_dir / name).is_file() for name in ("chat_template.jinja", "chat_template.json")):
        return True
    config = model_dir / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))


def require_chat_template(model_dir: Path, model_id: str) -> None:
    """Refuse a tokenizer without a chat template before training: its training and chat prompts could not agree.

    A folder with no tokenizer files at all is left to ``from_pretrained`` to report.
    """
    has_tokenizer = any((model_dir / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json"))
    if not has_tokenizer or has_chat_template(model_dir):
        return
    raise ModelChoiceError(
        f"{model_id} 的分词器没有对话模板（chat_template），多半是基座（base）模型而不是对话模型。"
        "请改用它的 -Instruct / -Chat 版本（例如 Qwen/Qwen2.5-7B-Instruct），或先给 tokenizer.chat_template 设一个模板"
        "并 save_pretrained 到模型目录（第 02 课讲了模板怎么写）。\n"
        f"{model_id}'s tokenizer has no chat template: it is probably a base model, not a chat model. Choose its "
        "-Instruct / -Chat version (e.g. Qwen/Qwen2.5-7B-Instruct), or set tokenizer.chat_template and save it "
        "into the model folder (lesson 02 shows how templates are written)."
    )

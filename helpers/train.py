"""QLoRA training on TRL's SFTTrainer, with the current APIs (transformers 5, trl 1.x, peft 0.21).

Old tutorials call ``SFTTrainer(tokenizer=..., max_seq_length=..., dataset_text_field=...)``;
today the tokenizer is ``processing_class=`` and lengths live in ``SFTConfig(max_length=...)``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from accelerate import PartialState
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
from transformers.trainer_callback import ProgressCallback
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from helpers import lesson03_cells as cells
from helpers.attention import fastest_attention
from helpers.cost import out_of_memory_error
from helpers.hardware import compute_dtype, device
from helpers.models import SEVEN_PROJECTIONS, ModelShape
from helpers.profiles import Profile, Recipe
from helpers.templates import IGNORE_INDEX

# peft 0.21 still reads the attribute transformers 5 renamed; the warning is theirs, not a student's problem.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

# The padding SFTTrainer applies to our rows (labels padded with -100), reused for held-out loss.
_PAD_LIKE_TRAINING = DataCollatorForLanguageModeling(pad_token_id=0)


def quantization_config(dtype: torch.dtype) -> BitsAndBytesConfig:
    """NF4 weights with double quantization; matmuls run in ``dtype`` (the QLoRA recipe): notebook 03's cell."""
    return cells.quantization(dtype=dtype)


def lora_config(recipe: Recipe, target_modules: tuple[str, ...] | str = SEVEN_PROJECTIONS) -> LoraConfig:
    """LoRA on ``target_modules`` (default: the seven projections; ``profile.lora_targets``): notebook 03's cell."""
    return cells.lora(recipe=recipe, target_modules=target_modules)


def sft_config(recipe: Recipe, output_dir: Path, dtype: torch.dtype, seed: int,
               eval_steps: int | None = None) -> SFTConfig:
    """Trainer settings (padding-free, checkpoints every ``save_steps``, TensorBoard logs): notebook 03's cell.

    ``eval_steps``: the held-out loss every that many steps (the trainer then needs ``eval_rows``); None: no eval.
    """
    return cells.sft_config(output_dir=output_dir, recipe=recipe, eval_steps=eval_steps, dtype=dtype, seed=seed)


def load_model_4bit(model_dir: Path, profile: Profile, attn_implementation: str | None = None) -> AutoModelForCausalLM:
    """The base model quantized to NF4 and ready for k-bit training (attention: ``fastest_attention()``).

    Notebook 03's cell, with the device of this process (one GPU per rank under DDP).
    """
    dtype = compute_dtype(profile)
    device_map = {"": PartialState().local_process_index if device().type == "cuda" else "cpu"}
    return cells.load_4bit(model_dir=model_dir, bnb_config=quantization_config(dtype), dtype=dtype,
                           attention=attn_implementation or fastest_attention(), device_map=device_map)


class LossPlot(TrainerCallback):
    """Collects logged values and redraws their plot in the notebook as training goes.

    ``keys``: what to plot, each as logged: ``("loss", "eval_loss")`` draws the training loss and the held-out loss
    (logged at other steps) side by side; DPO's reward keys are logged together.
    """

    def __init__(self, title: str, live: bool = True, keys: tuple[str, ...] = ("loss",)) -> None:
        self.title, self.live, self.keys = title, live, keys
        self.points: dict[str, list[tuple[int, float]]] = {key: [] for key in keys}
        self._handle = None

    @property
    def steps(self) -> list[int]:
        """The steps at which the first key was logged."""
        return [step for step, _ in self.points[self.keys[0]]]

    @property
    def values(self) -> dict[str, list[float]]:
        return {key: [value for _, value in points] for key, points in self.points.items()}

    def on_log(self, args, state, control, logs=None, **kwargs):
        logged = [key for key in self.keys if logs and key in logs]
        for key in logged:
            self.points[key].append((state.global_step, float(logs[key])))
        if logged and self.live:
            self._redraw()

    def figure(self):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        for key, points in self.points.items():
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=key)
        ax.set(title=self.title, xlabel="step", ylabel="loss" if all("loss" in key for key in self.keys) else "value")
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
                 callbacks: list[TrainerCallback] = (), eval_rows: list[dict] | None = None) -> SFTTrainer:
    """Notebook 03's SFTTrainer cell (LoRA kept in fp32 unless training in bf16), with a tqdm progress bar."""
    check_lora_targets(model, lora.target_modules)
    return with_tqdm(cells.trainer(model=model, args=args, train_rows=train_rows, eval_rows=eval_rows,
                                   tokenizer=tokenizer, lora=lora, callbacks=list(callbacks)))


def with_tqdm(trainer):
    """Swap the notebook's HTML progress table (which nbval cannot compare) for a tqdm bar."""
    for callback in list(trainer.callback_handler.callbacks):  # by name: importing its module needs IPython
        if type(callback).__name__ == "NotebookProgressCallback":
            trainer.remove_callback(callback)
    if not any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.add_callback(ProgressCallback)
    return trainer


def unfinished_checkpoint(output_dir: str | Path, max_steps: int) -> str | None:
    """The last complete checkpoint of an interrupted run, or None when there is none or the run had finished."""
    return cells.last_complete_checkpoint(output_dir, max_steps)


def train(trainer: SFTTrainer, lesson: str = "nekoqa", recipe: Recipe | None = None) -> None:
    """Notebook 03's training cell: resume an interrupted run from its last complete checkpoint, else start.

    A CUDA out-of-memory becomes ``helpers.cost.MemoryFitError``: what to lower for ``lesson``'s ``recipe``, and
    the last complete checkpoint, from which the next run resumes.
    """
    try:
        cells.train(args=trainer.args, trainer=trainer)
    except torch.OutOfMemoryError as error:
        args = trainer.args
        checkpoint = cells.last_complete_checkpoint(args.output_dir, args.max_steps)
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


def base_and_tuned_loss(model: PeftModel, rows: list[dict[str, list[int]]]) -> tuple[float, float]:
    """Held-out loss of the base (adapter switched off) and of the tuned model, on the same weights."""
    with model.disable_adapter():
        base = heldout_loss(model, rows)
    return base, heldout_loss(model, rows)

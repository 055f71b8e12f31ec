"""What later lessons need from the training lessons (03-05): their data, adapters and tuned models.

``train_lesson("nekoqa")`` runs the same steps as notebook 03 (same recipe, seed and helpers) and
saves the adapter where 03 saves it, so lesson 06 or 07 opened first still has an adapter to use.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoTokenizer

from helpers.data import course_conversations, encode_conversations
from helpers.download import download_model
from helpers.hardware import compute_dtype
from helpers.paths import COMPLETE_MARKER, display_path, is_complete, mark_complete, outputs_dir
from helpers.profiles import Profile, get_profile
from helpers.train import LossPlot, load_model_4bit, lora_config, make_trainer, sft_config, train

LESSONS = ("nekoqa", "tang", "huanhuan")


def adapter_dir(lesson: str, profile: Profile) -> Path:
    """Where a training lesson saves its LoRA adapter: ``outputs/adapters/<lesson>-<profile>``."""
    return outputs_dir("adapters", f"{lesson}-{profile.name}")


def checkpoint_dir(lesson: str, profile: Profile) -> Path:
    return outputs_dir("checkpoints", f"{lesson}-{profile.name}")


def encoded_split(lesson: str, split: str, tokenizer, profile: Profile) -> list[dict[str, list[int]]]:
    """A lesson's ``train`` or ``eval`` rows, encoded with the label mask at the recipe's cutoff."""
    recipe = profile.recipe(lesson)
    limit = recipe.train_rows if split == "train" else recipe.eval_rows
    return encode_conversations(tokenizer, course_conversations(lesson, split, limit, profile), recipe.cutoff)


def save_adapter(model, tokenizer, target: Path) -> None:
    """Save adapter and tokenizer, then the marker: a folder without it is never reused."""
    (target / COMPLETE_MARKER).unlink(missing_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    mark_complete(target)


def train_lesson(lesson: str, profile: Profile | None = None, force: bool = False, live_plot: bool = True) -> Path:
    """The adapter of a training lesson: reuse a finished one, else train it exactly as the lesson does."""
    profile = profile or get_profile()
    target = adapter_dir(lesson, profile)
    if is_complete(target) and not force:
        print(f"使用已训练的适配器 / reusing adapter {display_path(target)}")
        return target
    print(f"没有找到 {lesson} 的适配器，按第 03-05 课的配方训练 / training the {lesson} adapter")
    recipe = profile.recipe(lesson)
    model_dir = download_model(profile=profile)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_rows = encoded_split(lesson, "train", tokenizer, profile)
    torch.manual_seed(profile.seed)
    model = load_model_4bit(model_dir, profile)
    args = sft_config(recipe, checkpoint_dir(lesson, profile), compute_dtype(profile), profile.seed)
    plot = LossPlot(title=f"{lesson} training loss", live=live_plot)
    trainer = make_trainer(model, tokenizer, train_rows, lora_config(recipe), args, callbacks=[plot])
    train(trainer)
    save_adapter(trainer.model, tokenizer, target)
    return target


def load_tuned(lesson: str, profile: Profile | None = None) -> tuple[PeftModel, object]:
    """The 4-bit base with the lesson's adapter attached (trained first if missing), and its tokenizer."""
    profile = profile or get_profile()
    adapter = train_lesson(lesson, profile)
    base = load_model_4bit(download_model(profile=profile), profile)
    return PeftModel.from_pretrained(base, adapter), AutoTokenizer.from_pretrained(adapter)


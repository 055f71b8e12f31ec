"""Preference tuning (DPO, lesson 09) on top of a lesson's SFT adapter, with TRL's DPOTrainer.

DPO needs no reward model: for each prompt it raises the policy's log-probability of the chosen answer
and lowers that of the rejected one, both measured against a frozen reference (here: the SFT adapter).
"""

from __future__ import annotations

import warnings
from dataclasses import fields
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import TrainerCallback, TrainingArguments
from trl import DPOConfig, DPOTrainer

from helpers.data import load_preferences  # noqa: F401 (lesson 09 imports it from here)
from helpers.download import download_model
from helpers.encoding import encode_conversations
from helpers.lesson03_cells import adapters_in_training_dtype
from helpers.lessons import require_adapter
from helpers.paths import one_at_a_time
from helpers.profiles import Profile, Recipe
from helpers.train import completion_logprobs, load_model_4bit, sft_config, with_tqdm

# trl 1.16's DPOTrainer still calls the methods transformers 5 renamed to activation_checkpointing_*; theirs to fix.
warnings.filterwarnings("ignore", message="`gradient_checkpointing_(enable|disable)` is deprecated",
                        category=FutureWarning)

REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins")


def preference_accuracy(model, tokenizer, pairs: list[dict], cutoff: int) -> float:
    """Share of pairs where the model gives the chosen answer a higher log-probability than the rejected one."""
    chosen = encode_conversations(tokenizer, [p["prompt"] + p["chosen"] for p in pairs], cutoff)
    rejected = encode_conversations(tokenizer, [p["prompt"] + p["rejected"] for p in pairs], cutoff)
    wins = [c > r for c, r in zip(completion_logprobs(model, chosen), completion_logprobs(model, rejected),
                                  strict=True)]
    return sum(wins) / len(wins)


def load_policy(lesson: str, profile: Profile) -> PeftModel:
    """The 4-bit base with the lesson's SFT adapter (``train_lesson`` it first), trainable: DPO continues from it.

    TRL copies this adapter into a frozen "ref" adapter and uses it as the reference model.
    """
    adapter = require_adapter(lesson, profile)
    base = load_model_4bit(download_model(profile=profile), profile)
    with one_at_a_time(adapter):
        return PeftModel.from_pretrained(base, adapter, is_trainable=True)


def dpo_config(recipe: Recipe, output_dir: Path, dtype: torch.dtype, seed: int, beta: float) -> DPOConfig:
    """The SFT lessons' trainer settings (batch, schedule, checkpoints, dtype, optimizer, seed), plus DPO's ``beta``.

    ``beta``: how far the policy may move from the reference (small beta, bigger moves; 0.1 is common).
    """
    sft = sft_config(recipe, output_dir, dtype, seed)
    shared = {field.name: getattr(sft, field.name) for field in fields(TrainingArguments) if field.init}
    return DPOConfig(**shared, beta=beta, max_length=recipe.cutoff)


def make_dpo_trainer(model: PeftModel, tokenizer, pairs: list[dict], args: DPOConfig,
                     callbacks: list[TrainerCallback] = ()) -> DPOTrainer:
    """A DPOTrainer on preference pairs; the reference is a frozen copy of the SFT adapter."""
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer,
                         callbacks=list(callbacks))
    adapters_in_training_dtype(trainer)
    return with_tqdm(trainer)

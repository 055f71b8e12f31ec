"""Preference tuning (DPO, lesson 09) on top of a lesson's SFT adapter, with TRL's DPOTrainer.

DPO needs no reward model: for each prompt it raises the policy's log-probability of the chosen answer
and lowers that of the rejected one, both measured against a frozen reference (here: the SFT adapter).
"""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from helpers.data import encode_conversations, read_records, validate
from helpers.download import download_model
from helpers.lessons import train_lesson
from helpers.paths import DATA_DIR
from helpers.profiles import Profile, Recipe
from helpers.templates import Message
from helpers.train import completion_logprobs, load_model_4bit, with_tqdm

PREFERENCE_FILES = {"train": DATA_DIR / "nekoqa" / "dpo_train.json", "eval": DATA_DIR / "nekoqa" / "dpo_eval.json"}
BETA = 0.1  # how far the policy may move from the reference: small beta, bigger moves
REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins")


def load_preferences(split: str, path: Path | None = None) -> list[dict[str, list[Message]]]:
    """Preference pairs in TRL's conversational format: ``prompt``, ``chosen``, ``rejected`` message lists."""
    path = path or PREFERENCE_FILES[split]
    validate(path)  # a clear error naming file, row and field on a broken pair
    return [
        {
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
        for row in read_records(path)
    ]


def preference_accuracy(model, tokenizer, pairs: list[dict], cutoff: int) -> float:
    """Share of pairs where the model gives the chosen answer a higher log-probability than the rejected one."""
    chosen = encode_conversations(tokenizer, [p["prompt"] + p["chosen"] for p in pairs], cutoff)
    rejected = encode_conversations(tokenizer, [p["prompt"] + p["rejected"] for p in pairs], cutoff)
    wins = [c > r for c, r in zip(completion_logprobs(model, chosen), completion_logprobs(model, rejected),
                                  strict=True)]
    return sum(wins) / len(wins)


def load_policy(lesson: str, profile: Profile) -> PeftModel:
    """The 4-bit base with the lesson's SFT adapter (trained first if missing), trainable: DPO continues from it.

    TRL copies this adapter into a frozen "ref" adapter and uses it as the reference model.
    """
    adapter = train_lesson(lesson, profile)
    return PeftModel.from_pretrained(load_model_4bit(download_model(profile=profile), profile), adapter,
                                     is_trainable=True)


def dpo_config(recipe: Recipe, output_dir: Path, dtype: torch.dtype, seed: int) -> DPOConfig:
    """DPO settings in the same spirit as ``sft_config``: checkpoints to resume from, tqdm, no reporting."""
    return DPOConfig(
        output_dir=str(output_dir),
        beta=BETA,
        max_length=recipe.cutoff,
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=recipe.warmup_steps,
        max_steps=recipe.max_steps,
        logging_steps=1,
        save_steps=recipe.save_steps,
        save_total_limit=2,
        activation_checkpointing=True,
        bf16=dtype is torch.bfloat16,
        fp16=dtype is torch.float16,
        use_cpu=not torch.cuda.is_available(),
        optim="paged_adamw_8bit" if torch.cuda.is_available() else "adamw_torch",
        report_to="none",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )


def make_dpo_trainer(model: PeftModel, tokenizer, pairs: list[dict], args: DPOConfig,
                     callbacks: list[TrainerCallback] = ()) -> DPOTrainer:
    """A DPOTrainer on preference pairs; the reference is a frozen copy of the SFT adapter."""
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer,
                         callbacks=list(callbacks))
    return with_tqdm(trainer)

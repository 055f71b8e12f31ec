"""One supervised fine-tuning run, from conversations to a trained ``SFTTrainer``.

``train_lesson`` (notebooks 04-09), ``scripts/train.py --lesson`` and ``scripts/train.py --data`` (your own data set)
all run ``prepare`` then ``fit``: notebook 03's cells with the profile's recipe and seed. Under several processes
(``accelerate launch``) every rank runs them; only rank 0 prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoTokenizer, TrainerCallback
from trl import SFTTrainer

from helpers.cost import plan_batch
from helpers.download import download_model
from helpers.encoding import encode_and_count, encode_conversations
from helpers.hardware import compute_dtype
from helpers.profiles import Profile, Recipe
from helpers.templates import Message
from helpers.train import base_and_tuned_loss, load_model_4bit, logged_losses, lora_config, make_trainer, sft_config
from helpers.train import train as train_with_resume


@dataclass(frozen=True)
class PreparedRun:
    """A run up to loading the model: the recipe, the model's folder and tokenizer, both splits encoded."""

    name: str  # the recipe's name in the profile: a lesson, or OWN_DATA_RECIPE
    recipe: Recipe
    model_dir: Path
    tokenizer: object
    train_rows: list[dict[str, list[int]]]
    held_out_rows: list[dict[str, list[int]]]


def prepare(profile: Profile, name: str, train: list[list[Message]], held_out: list[list[Message]],
            recipe: Recipe | None = None) -> PreparedRun:
    """Encode both splits at the cutoff of ``recipe`` (default: the profile's recipe ``name``); print the rows, the
    share truncated, the batch split for this card and the memory estimate.

    Nothing is loaded yet: a run that cannot fit the GPU stops here with ``MemoryFitError`` and what to lower.
    """
    recipe = recipe or profile.recipe(name)  # its rows per optimizer step; plan_batch splits them for this card
    model_dir = download_model(profile=profile)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_rows, cut = encode_and_count(tokenizer, train, recipe.cutoff)
    held_out_rows = encode_conversations(tokenizer, held_out, recipe.cutoff)
    PartialState().print(
        f"数据 / rows: 训练 train {len(train)} | 留出 held-out {len(held_out)}；超过 {recipe.cutoff} 个 token 被截断的"
        f"训练样本 / truncated at the cutoff: {cut} / {len(train)} ({cut / len(train):.0%})"
    )
    recipe = plan_batch(model_dir, name, recipe, [len(row["input_ids"]) for row in train_rows])
    return PreparedRun(name, recipe, model_dir, tokenizer, train_rows, held_out_rows)


def fit(run: PreparedRun, profile: Profile, checkpoints: Path, callbacks: Sequence[TrainerCallback] = (),
        eval_during_training: bool = False) -> SFTTrainer:
    """Load the 4-bit base, attach LoRA and train; an unfinished run in ``checkpoints`` resumes from its last one.

    ``eval_during_training``: log the held-out loss a few times while training (a ``LossPlot`` can draw it).
    """
    recipe, state = run.recipe, PartialState()
    torch.manual_seed(profile.seed)
    model = load_model_4bit(run.model_dir, profile)
    eval_steps = recipe.eval_steps if eval_during_training else None
    args = sft_config(recipe, checkpoints, compute_dtype(profile), profile.seed, eval_steps=eval_steps)
    args.ddp_find_unused_parameters = False  # every LoRA weight is used in each forward: skip DDP's extra search
    world = state.num_processes
    batch = recipe.batch_size * recipe.grad_accum * world
    state.print(f"进程数 / world_size={world} | 每步样本数 / effective batch "
                f"{recipe.batch_size} x {recipe.grad_accum} x {world} = {batch}")
    trainer = make_trainer(model, run.tokenizer, run.train_rows, lora_config(recipe, profile.lora_targets), args,
                           callbacks=callbacks, eval_rows=run.held_out_rows if eval_during_training else None)
    train_with_resume(trainer, run.name, recipe)
    return trainer


def report(trainer: SFTTrainer, run: PreparedRun) -> tuple[float, float]:
    """Print the training loss's first and last step and the held-out loss before and after; return the latter two.

    "Before" is the base with the adapter switched off: a fresh LoRA adapter adds zero, so it is the untrained model.
    """
    state = PartialState()
    losses = logged_losses(trainer)
    if losses:  # none when a finished run was resumed at its end
        state.print(f"训练 loss / training loss: {losses[0]:.3f} -> {losses[-1]:.3f}")
    before, after = base_and_tuned_loss(trainer.model, run.held_out_rows)
    state.print(f"留出集 loss（{len(run.held_out_rows)} 行）/ held-out loss ({len(run.held_out_rows)} rows): "
                f"训练前 before {before:.3f} -> 训练后 after {after:.3f}")
    return before, after

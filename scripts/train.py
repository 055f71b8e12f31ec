"""Train a lesson's LoRA adapter outside the notebooks: one GPU, several GPUs (DDP / DeepSpeed) or the CPU.

Same helpers, recipe and seed as notebooks 03-05 (``helpers.lessons``); only rank 0 prints and saves.

    python scripts/train.py --lesson nekoqa
    python scripts/train.py --lesson huanhuan --model LLM-Research/Llama-3.2-3B-Instruct   # or COURSE_MODEL=...
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 scripts/train.py --lesson nekoqa
    torchrun --nproc_per_node 2 scripts/train.py --lesson nekoqa
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without `pip install -e .`

from helpers.cost import check_fits
from helpers.download import download_model
from helpers.hardware import compute_dtype
from helpers.lessons import LESSONS, adapter_dir, checkpoint_dir, encoded_split
from helpers.models import MODEL_HELP
from helpers.paths import COMPLETE_MARKER, display_path, mark_complete
from helpers.profiles import PROFILES, Profile, get_profile
from helpers.train import load_model_4bit, logged_losses, lora_config, make_trainer, sft_config, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="QLoRA 训练一课的适配器 / train a lesson's QLoRA adapter")
    parser.add_argument("--lesson", choices=LESSONS, required=True)
    parser.add_argument("--profile", choices=list(PROFILES), help="默认由 COURSE_PROFILE 或硬件决定 / default: env")
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--max-steps", type=int, help="覆盖配方的步数 / override the recipe's steps")
    parser.add_argument("--train-rows", type=int, help="只用前 N 行训练 / train on the first N rows only")
    parser.add_argument("--cutoff", type=int, help="覆盖最大 token 数 / override the recipe's cutoff")
    parser.add_argument("--output", type=Path, help="存到 DIR/adapter 与 DIR/checkpoints / run folder")
    return parser.parse_args(argv)


def with_overrides(profile: Profile, lesson: str, args: argparse.Namespace) -> Profile:
    """The profile with the lesson's recipe changed by the command-line options that were given."""
    changes = {"max_steps": args.max_steps, "train_rows": args.train_rows, "cutoff": args.cutoff}
    recipe = dataclasses.replace(profile.recipe(lesson), **{k: v for k, v in changes.items() if v is not None})
    return dataclasses.replace(profile, recipes={**profile.recipes, lesson: recipe})


def output_dirs(lesson: str, profile: Profile, output: Path | None) -> tuple[Path, Path]:
    """Adapter and checkpoint folders: the notebook's in ``outputs/``, or ``output/{adapter,checkpoints}``."""
    if output is None:
        return adapter_dir(lesson, profile), checkpoint_dir(lesson, profile)
    return output / "adapter", output / "checkpoints"


def save(trainer, target: Path) -> None:
    """Save adapter and tokenizer through the trainer (called on every rank: ZeRO-3 gathers shards), marker last."""
    state = PartialState()
    if state.is_main_process:
        (target / COMPLETE_MARKER).unlink(missing_ok=True)
    trainer.save_model(str(target))
    if state.is_main_process:
        mark_complete(target)
        print(f"LoRA 适配器已保存 / adapter saved: {display_path(target)}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    profile = with_overrides(get_profile(args.profile, model=args.model), args.lesson, args)
    recipe = profile.recipe(args.lesson)
    target, checkpoints = output_dirs(args.lesson, profile, args.output)
    model_dir = download_model(profile=profile)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_rows = encoded_split(args.lesson, "train", tokenizer, profile)
    torch.manual_seed(profile.seed)
    check_fits(model_dir, args.lesson, recipe)  # before loading: a run that cannot fit stops here, with what to lower
    model = load_model_4bit(model_dir, profile)
    sft_args = sft_config(recipe, checkpoints, compute_dtype(profile), profile.seed)
    sft_args.ddp_find_unused_parameters = False  # every LoRA weight is used in each forward: skip DDP's extra search
    state = PartialState()
    world = state.num_processes
    batch = recipe.batch_size * recipe.grad_accum * world
    state.print(f"进程数 / world_size={world} | 每步样本数 / effective batch "
                f"{recipe.batch_size} x {recipe.grad_accum} x {world} = {batch}")
    trainer = make_trainer(model, tokenizer, train_rows, lora_config(recipe, profile.lora_targets), sft_args)
    train(trainer, args.lesson, recipe)
    losses = logged_losses(trainer)
    state.print(f"训练 loss / training loss: {losses[0]:.3f} -> {losses[-1]:.3f}")
    save(trainer, target)


if __name__ == "__main__":
    main()

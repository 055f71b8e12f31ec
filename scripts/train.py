"""Train a QLoRA adapter outside the notebooks, on a lesson's data or your own: one GPU, several (DDP / DeepSpeed), CPU.

Same helpers, recipe and seed as notebooks 03-05 (``helpers.sft_run``); only rank 0 prints and saves.

    python scripts/train.py --lesson nekoqa
    python scripts/train.py --lesson huanhuan --model LLM-Research/Llama-3.2-3B-Instruct   # or COURSE_MODEL=...
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 scripts/train.py --lesson nekoqa
    torchrun --nproc_per_node 2 scripts/train.py --lesson nekoqa

Your own data set (Alpaca with or without ``history``, ShareGPT ``conversations``, OpenAI-style ``messages``; a JSON
array or JSON lines; a question / answer CSV converts with ``python -m helpers.data csv2json``), lesson 03's recipe:

    python scripts/train.py --data my.json --output outputs/mydata                  # 10% of the rows held out
    python scripts/train.py --data my.json --eval my_eval.json --system "你是..." --output outputs/mydata
    python scripts/train.py --data my.json --dry-run                                # check only: rows, cutoff, memory

The file is checked first (the errors of ``python -m helpers.data validate``); the run prints the rows trained and
held out, the share truncated at the cutoff, the memory estimate, then the held-out loss before and after training.
The adapter is saved in ``DIR/adapter``; an interrupted run resumes from ``DIR/checkpoints``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from accelerate import PartialState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without `pip install -e .`

from helpers.cost import MemoryFitError
from helpers.data import DataError
from helpers.lessons import adapter_dir, checkpoint_dir, prepare_lesson
from helpers.models import MODEL_HELP
from helpers.paths import COMPLETE_MARKER, display_path, mark_complete
from helpers.profiles import OWN_DATA_RECIPE, PROFILES, Profile, get_profile
from helpers.registry import SFT_LESSONS
from helpers.sft_run import PreparedRun, fit, prepare, report
from helpers.splits import DEFAULT_HELD_OUT_SHARE, own_conversations
from helpers.templates import TemplateError


def held_out_share(text: str) -> float:
    """``--eval-share``: a number strictly between 0 and 1."""
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0 < share < 1:
        raise argparse.ArgumentTypeError(f"应是 0 和 1 之间的小数，例如 0.1 / must be between 0 and 1, e.g. 0.1: "
                                         f"{text}")
    return share


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="QLoRA 训练一课或你自己数据的适配器 / train a QLoRA adapter on a "
                                                 "lesson's data set or your own")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--lesson", choices=SFT_LESSONS)
    source.add_argument("--data", type=Path, help="你自己的数据 / your own data: Alpaca, ShareGPT 或 messages，"
                                                  "JSON 或 JSON lines（用第 03 课的配方 / lesson 03's recipe）")
    held_out = parser.add_mutually_exclusive_group()
    held_out.add_argument("--eval", type=Path, help="留出集文件（格式同 --data）/ held-out file (any --data schema)")
    held_out.add_argument("--eval-share", type=held_out_share,
                          help=f"没有 --eval 时留出的比例，按配置的随机种子固定抽取，至少 1 行；默认 "
                               f"{DEFAULT_HELD_OUT_SHARE} / share of --data held out without --eval, picked with the "
                               f"profile's seed, at least 1 row; default {DEFAULT_HELD_OUT_SHARE}")
    parser.add_argument("--system", help="给没有 system 提示词的行加上它 / system prompt for rows that have none")
    parser.add_argument("--profile", choices=list(PROFILES), help="默认由 COURSE_PROFILE 或硬件决定 / default: env")
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--max-steps", type=int, help="覆盖配方的步数 / override the recipe's steps")
    parser.add_argument("--train-rows", type=int, help="只用前 N 行训练 / train on the first N rows only")
    parser.add_argument("--cutoff", type=int, help="覆盖最大 token 数 / override the recipe's cutoff")
    parser.add_argument("--output", type=Path, help="存到 DIR/adapter 与 DIR/checkpoints（--data 必填）/ run folder "
                                                    "(required with --data)")
    parser.add_argument("--dry-run", action="store_true", help="只检查数据，打印行数、截断比例和显存估算，不加载模型、"
                                                               "不训练 / check the data and print rows, truncation and "
                                                               "the memory estimate; load and train nothing")
    args = parser.parse_args(argv)
    if args.lesson and (args.eval or args.eval_share or args.system):
        parser.error("--eval / --eval-share / --system 只用于 --data，课程数据自带留出集和提示词 / "
                     "only with --data: a lesson has its own held-out set and system prompt")
    if args.data and not args.output and not args.dry_run:
        parser.error("--data 需要 --output DIR（适配器存到 DIR/adapter）/ --data needs --output DIR "
                     "(the adapter goes to DIR/adapter)")
    return args


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


def prepared(args: argparse.Namespace, profile: Profile, name: str) -> PreparedRun:
    """The lesson's or the ``--data`` file's rows, checked and encoded, with the memory estimate printed."""
    if args.lesson:
        return prepare_lesson(name, profile)
    share = args.eval_share or DEFAULT_HELD_OUT_SHARE
    train, held_out = own_conversations(args.data, args.eval, share, args.system, profile.seed)
    return prepare(profile, name, train[: profile.recipe(name).train_rows], held_out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = args.lesson or OWN_DATA_RECIPE
    profile = with_overrides(get_profile(args.profile, model=args.model), name, args)
    try:
        run = prepared(args, profile, name)
    except (DataError, TemplateError, MemoryFitError) as error:  # a message to act on, not a traceback
        if PartialState().is_main_process:
            print(error, file=sys.stderr)
        return 1
    if args.dry_run:
        PartialState().print("--dry-run：检查完毕，没有训练 / checked, nothing trained")
        return 0
    target, checkpoints = output_dirs(name, profile, args.output)
    trainer = fit(run, profile, checkpoints)
    save(trainer, target)
    report(trainer, run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Activation checkpointing on and off for the tiny profile's training steps on CPU (why ``plan_batch`` turns it off
there).

    python benchmarks/checkpointing.py [--steps 3] [--out benchmarks/results/checkpointing-tiny.json]

Each SFT lesson trains its tiny recipe (rows per step, cutoff) on the same rows with the same seed through the
course's own ``load_model_4bit`` / ``lora_config`` / ``sft_config`` / ``make_trainer``, padding-free, once with
checkpointing (the baseline: what the recipe asks for) and once without. Each run is a forked process from one loaded
base model, so its peak RSS is its own. The first optimizer step is a warm-up and is not timed; the real (non-pad)
tokens of the timed steps (TRL's ``num_tokens``) over their wall time give tokens/s. Recomputing the activations
changes no number, so the two runs' losses must agree.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoTokenizer
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from helpers.download import download_model
from helpers.encoding import encode_conversations
from helpers.hardware import compute_dtype
from helpers.hub_data import course_conversations
from helpers.measure import peak_bytes, reset_peak, run_forked
from helpers.profiles import Profile, Recipe, get_profile
from helpers.registry import SFT_LESSONS
from helpers.train import load_model_4bit, lora_config, make_trainer, sft_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for benchmarks
from benchmarks.gpu_check import Clock  # noqa: E402

WARMUP_STEPS = 1


def train_run(model, tokenizer, rows: list[dict], recipe: Recipe, profile: Profile) -> dict:
    """Train ``rows`` with ``recipe``; the timed steps' real tokens/s, the peak RSS and the step losses."""
    clock = Clock()  # gpu_check's per-step clock
    with tempfile.TemporaryDirectory() as scratch:
        args = replace(sft_config(recipe, Path(scratch), compute_dtype(profile), profile.seed), save_strategy="no",
                       disable_tqdm=True)
        torch.manual_seed(profile.seed)
        trainer = make_trainer(model, tokenizer, rows, lora_config(recipe), args, callbacks=[clock])
        for quiet in (ProgressCallback, PrinterCallback):
            trainer.remove_callback(quiet)
        reset_peak()
        trainer.train()
        peak = peak_bytes()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]  # one per step (logging_steps=1)
    seconds = sum(clock.seconds[WARMUP_STEPS:])
    real_tokens = int(logs[-1]["num_tokens"] - logs[WARMUP_STEPS - 1]["num_tokens"])  # TRL counts the rows' tokens
    return {"checkpointing": recipe.checkpointing, "timed_steps": len(clock.seconds) - WARMUP_STEPS,
            "real_tokens": real_tokens, "seconds": seconds, "real_tokens_per_s": real_tokens / seconds,
            "peak_memory_mib": peak / 2**20,
            "losses": [entry["loss"] for entry in logs]}


def benchmark(profile: Profile, steps: int) -> dict:
    """Every SFT lesson, checkpointing on (baseline) and off; ``steps`` timed steps after the warm-up."""
    model_dir = download_model(profile=profile)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the forked runs set their own threads (see run_forked)
    base = load_model_4bit(model_dir, profile)
    report = {"profile": profile.name, "device": f"cpu, {threads} threads", "lessons": {}}
    for lesson in SFT_LESSONS:
        recipe = replace(profile.recipe(lesson), max_steps=WARMUP_STEPS + steps, warmup_steps=0)
        rows = encode_conversations(tokenizer, course_conversations(lesson, "train", recipe.rows_per_step *
                                                                    recipe.max_steps), recipe.cutoff)
        runs = [run_forked(threads, train_run, base, tokenizer, rows, replace(recipe, checkpointing=on), profile)
                for on in (True, False)]
        with_ckpt, without = runs
        report["lessons"][lesson] = {
            "rows_per_step": recipe.rows_per_step, "cutoff": recipe.cutoff, "runs": runs,
            "speedup_without": without["real_tokens_per_s"] / with_ckpt["real_tokens_per_s"],
            "same_losses": all(abs(a - b) <= 1e-4 * abs(a) for a, b in zip(with_ckpt["losses"], without["losses"],
                                                                           strict=True)),
        }
    return report


def table(report: dict) -> str:
    lines = [f"{'lesson':<10}{'checkpointing':>14}{'real tok':>10}{'seconds':>9}{'real tok/s':>11}{'peak MiB':>10}"]
    for lesson, result in report["lessons"].items():
        for run in result["runs"]:
            lines.append(f"{lesson:<10}{'on' if run['checkpointing'] else 'off':>14}{run['real_tokens']:>10}"
                         f"{run['seconds']:>9.1f}{run['real_tokens_per_s']:>11.1f}{run['peak_memory_mib']:>10.0f}")
        lines.append(f"{lesson}: off / on = {result['speedup_without']:.2f}x, "
                     f"losses {'agree' if result['same_losses'] else 'DIFFER'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/checkpointing.py", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up step")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "checkpointing-tiny.json")
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    report = benchmark(get_profile("tiny"), args.steps)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(table(report))
    return 0 if all(result["same_losses"] for result in report["lessons"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

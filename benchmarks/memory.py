"""Check ``helpers.memory.estimate`` against measured peaks of the tiny profile on CPU (issue 7).

    python benchmarks/memory.py [--out benchmarks/results/memory-tiny.json]

What is compared, for a few batch shapes with and without gradient checkpointing:

- weights: the estimate against ``get_memory_footprint()`` of the NF4-loaded model (which counts 4 bits per
  quantized weight and leaves out the absmax constants, about 3% of them);
- training steps: the estimate's gradients + optimizer states + activations + transient + CPU overhead against
  the increase of the process's peak RSS (``VmHWM``) over its RSS just before ``trainer.train()``, during 2 steps of
  the course's own trainer (``sft_config``, ``make_trainer``) on rows of exactly ``length`` tokens. Weights, LoRA
  parameters and the interpreter are resident before the steps and left out on both sides. Each shape runs in a
  forked process, so no run inherits another's peak, and glibc is told to give every freed block over 64 KiB back
  to the system (``mallopt``), so the RSS follows the live tensors instead of what malloc keeps for reuse.

The estimate must be within 20% of each measured increase (exit code 1 otherwise).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoConfig, AutoTokenizer
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from helpers.measure import peak_bytes, reset_peak, rss_bytes, run_forked
from helpers.memory import ModelShape, Settings, estimate
from helpers.profiles import get_profile
from helpers.tiny_model import ensure_tiny_model
from helpers.train import load_model_4bit, lora_config, make_trainer, sft_config

# (batch size, row length, checkpointing); the first is the tiny recipe's own shape
SHAPES = [(4, 192, True), (2, 256, False), (4, 384, True), (4, 256, False)]
STEPS = 2
MAX_ERROR = 0.2
MIB = 2**20
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter: blocks above this size are mmap-ed, and unmapped when freed


def synthetic_rows(count: int, length: int, vocab_size: int) -> list[dict[str, list[int]]]:
    """Rows of exactly ``length`` random tokens, all of them learned (so the batch size in tokens is exact)."""
    rng = random.Random(0)
    rows = []
    for _ in range(count):
        ids = [rng.randrange(100, vocab_size) for _ in range(length)]
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": ids})
    return rows


def measure_steps(model, tokenizer, batch_size: int, length: int, checkpointing: bool) -> int:
    """Peak RSS increase during ``STEPS`` training steps of the course's trainer, in bytes."""
    profile = get_profile("tiny")
    recipe = replace(profile.recipe("nekoqa"), batch_size=batch_size, cutoff=length, max_steps=STEPS, grad_accum=1,
                     warmup_steps=0)
    rows = synthetic_rows(batch_size * STEPS, length, model.config.vocab_size)
    with tempfile.TemporaryDirectory() as scratch:
        args = replace(sft_config(recipe, Path(scratch), torch.float32, profile.seed), save_strategy="no",
                       disable_tqdm=True, activation_checkpointing=checkpointing)
        trainer = make_trainer(model, tokenizer, rows, lora_config(recipe), args)
        for quiet in (ProgressCallback, PrinterCallback):
            trainer.remove_callback(quiet)
        before = rss_bytes()
        reset_peak()
        trainer.train()
        return peak_bytes() - before


def compare(shape: ModelShape, measured: int, batch_size: int, length: int, checkpointing: bool) -> dict:
    """One shape's estimated and measured step memory, and the relative error."""
    recipe = get_profile("tiny").recipe("nekoqa")
    settings = replace(Settings.for_recipe(recipe, gpu=False), batch_size=batch_size, length=length,
                       checkpointing=checkpointing)
    parts = estimate(shape, settings)
    step = parts.gradients + parts.optimizer + parts.activations + parts.transient + parts.overhead
    return {"batch_size": batch_size, "length": length, "checkpointing": checkpointing,
            "estimated_mib": step / MIB, "measured_mib": measured / MIB, "error": step / measured - 1,
            "parts_mib": {name: value / MIB for name, value in asdict(parts).items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/memory.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory-tiny.json")
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        raise SystemExit("这个检查测的是 CPU 上的 RSS / this check measures CPU RSS: run it without a GPU")
    ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    model_dir = ensure_tiny_model()
    shape = ModelShape.from_config(AutoConfig.from_pretrained(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the forked runs set their own threads (see run_forked)
    model = load_model_4bit(model_dir, get_profile("tiny"))
    weights = estimate(shape, Settings.for_recipe(get_profile("tiny").recipe("nekoqa"), gpu=False)).weights
    footprint = model.get_memory_footprint()
    report = {"weights": {"estimated_mib": weights / MIB, "footprint_mib": footprint / MIB,
                          "error": weights / footprint - 1}, "steps": []}
    print(f"weights: estimate {weights / MIB:.1f} MiB, get_memory_footprint {footprint / MIB:.1f} MiB "
          f"({weights / footprint - 1:+.1%})")
    print(f"{'batch':>5}{'length':>7}{'ckpt':>6}{'estimate MiB':>14}{'measured MiB':>14}{'error':>8}")
    for batch_size, length, checkpointing in SHAPES:
        measured = run_forked(threads, measure_steps, model, tokenizer, batch_size, length, checkpointing)
        row = compare(shape, measured, batch_size, length, checkpointing)
        report["steps"].append(row)
        print(f"{batch_size:>5}{length:>7}{'on' if checkpointing else 'off':>6}{row['estimated_mib']:>14.0f}"
              f"{row['measured_mib']:>14.0f}{row['error']:>+8.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"结果已写入 / results written to {args.out}")
    return 0 if all(abs(row["error"]) <= MAX_ERROR for row in report["steps"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())

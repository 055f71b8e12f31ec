"""How ``gpu-nvidia-h200.json`` was made from the H200 run of 2026-12-04 (kept so the conversion can be checked).

    python benchmarks/results/import_h200_2026_12_04.py ../shared/measurements/2026-12-04 \
        benchmarks/results/gpu-nvidia-h200.json

The raw files (``gpu-h200.json`` from ``benchmarks/gpu_check.py --budget-s 400`` at commit 8188ad7, ``probe1-h200.json``
and ``probe2-h200.json`` from that folder's ``probe.py``) record the mean tokens of a micro-step, not the largest one,
which is what the memory peak follows. This script replays each run's data path on the CPU (the same synthetic rows,
the same trainer and sampler, the training step replaced by a no-op) and records every micro-step's token count; the
replay is checked against the recorded mean of each run, to the token, before anything is written.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository
from benchmarks.gpu_check import lesson_rows  # noqa: E402
from benchmarks.pipeline import pipeline_settings  # noqa: E402
from helpers.profiles import GPU_RECIPES, get_profile  # noqa: E402
from helpers.tiny_model import ensure_tiny_model  # noqa: E402
from helpers.train import load_model_4bit, lora_config, make_trainer, sft_config  # noqa: E402

VOCAB = {"Qwen/Qwen2.5-1.5B-Instruct": 151936, "Qwen/Qwen2.5-7B-Instruct": 152064}
BATCHES_THEN = {"Qwen/Qwen2.5-1.5B-Instruct": {"nekoqa": 8, "tang": 8, "huanhuan": 8},
                "Qwen/Qwen2.5-7B-Instruct": {"nekoqa": 4, "tang": 8, "huanhuan": 8}}


class Count:
    """The trainer's collator, counting each micro-step's tokens; ids folded into the stand-in model's vocabulary."""

    def __init__(self, inner) -> None:
        self.inner, self.tokens = inner, []

    def __call__(self, examples: list[dict]) -> dict:
        self.tokens.append(sum(len(example["input_ids"]) for example in examples))
        return self.inner([{**example, "input_ids": [i % 49000 for i in example["input_ids"]],
                            "labels": [t if t < 0 else t % 49000 for t in example["labels"]]} for example in examples])


def replay(model, tokenizer, model_id: str, lesson: str, rows_per_step: int, steps: int, seeded: bool) -> list[int]:
    """Each micro-step's real tokens in that run, in order."""
    recipe = replace(GPU_RECIPES[lesson], max_steps=steps, grad_accum=1, warmup_steps=0, batch_size=rows_per_step)
    rows = lesson_rows(lesson, steps * rows_per_step, recipe.cutoff, VOCAB[model_id])
    with tempfile.TemporaryDirectory() as scratch:
        args = replace(sft_config(recipe, Path(scratch), torch.float32, 42), save_strategy="no", disable_tqdm=True,
                       report_to=[], eval_strategy="no", use_cpu=True, bf16=False, optim="adamw_torch",
                       **pipeline_settings("padding_free", recipe.cutoff))
        if seeded:  # gpu_check's measure_pipeline seeds torch before building the trainer; probe.py did not
            torch.manual_seed(42)
        trainer = make_trainer(model, tokenizer, rows, lora_config(recipe), args)
        counter = trainer.data_collator = Count(trainer.data_collator)
        trainer.training_step = lambda *args, **kwargs: torch.tensor(0.0)
        trainer.train()
    return counter.tokens


def unchecked(run: dict) -> dict:
    """probe.py switched checkpointing off in SFTConfig only, on a model the run before had set to checkpoint: it
    stayed on (each such run peaked within 5 MiB of the same run with checkpointing asked for). Say so, count it as on.
    """
    if run["ckpt"]:
        return {}
    return {"note": "checkpointing asked off but still on (the model kept the previous run's setting); same peak"}


def main(raw: Path, out: Path) -> None:
    folder = ensure_tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = load_model_4bit(folder, get_profile("tiny"), attn_implementation="sdpa")
    runs = []
    for report in json.loads((raw / "gpu-h200.json").read_text())["models"]:
        model_id = report["model"]
        for run in report["runs"]:
            lesson, rows = run["lesson"], run["batch_size"]
            assert rows == BATCHES_THEN[model_id][lesson]
            tokens = replay(model, tokenizer, model_id, lesson, rows, run["steps"], seeded=True)
            assert sum(tokens) == run["real_tokens"], (model_id, lesson, tokens, run["real_tokens"])
            fixed = run["pipeline"] == "fixed"
            runs.append({
                "source": "gpu-h200.json", "model": model_id, "lesson": lesson, "pipeline": run["pipeline"],
                "attention": run["attention"], "rows_per_step": rows, "grad_accum": 1, "checkpointing": True,
                "liger": False,
                "frozen_dtype": "float32", "lora_r": GPU_RECIPES[lesson].lora_r, "cutoff": run["cutoff"],
                "warmup_steps": 0, "timed_steps": run["steps"], "tokens_per_step": run["real_tokens"] / run["steps"],
                "max_tokens": rows * run["cutoff"] if fixed else max(tokens),
                "seconds_per_step": None, "real_tokens_per_s": None,  # first step included: not steady state
                "peak_mib": run["peak_memory_mib"]})
    for name in ("probe1-h200.json", "probe2-h200.json"):
        for run in json.loads((raw / name).read_text()):
            model_id, rows = run["model"], run["batch"]
            tokens = replay(model, tokenizer, model_id, "huanhuan", rows, 8, seeded=False)
            assert abs(statistics.mean(tokens[2:]) - run["tokens_per_step"]) < 1e-6, (name, run, tokens)
            runs.append({
                "source": name, "model": model_id, "lesson": "huanhuan", "pipeline": "padding_free",
                "attention": run["attention"], "rows_per_step": rows, "grad_accum": 1, "checkpointing": True,
                **unchecked(run),
                "liger": run.get("liger", False), "frozen_dtype": "float32", "lora_r": GPU_RECIPES["huanhuan"].lora_r,
                "cutoff": GPU_RECIPES["huanhuan"].cutoff, "warmup_steps": 2, "timed_steps": 6,
                "tokens_per_step": run["tokens_per_step"], "max_tokens": max(tokens),
                "seconds_per_step": run["step_s"], "real_tokens_per_s": run["steady_tok_s"],
                "peak_mib": run["peak_gib"] * 1024})
    out.write_text(json.dumps({
        "device": "NVIDIA H200",
        "memory_gib": 139.8,
        "measured": "2026-12-04, torch 2.11.0+cu130, transformers 5.23.0, peft 0.21.2, trl 1.16.0, bitsandbytes 0.50.2,"
                    " liger-kernel 0.8.5; course commit 8188ad7; random weights of benchmarks/model_configs",
        "source": "../shared/measurements/2026-12-04 (gpu-h200.json, probe1-h200.json, probe2-h200.json), converted by"
                  " benchmarks/results/import_h200_2026_12_04.py: max_tokens replayed on CPU, checked against the"
                  " recorded mean tokens per step",
        "runs": runs}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

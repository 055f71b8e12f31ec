"""The prepared GPU check (benchmarks/gpu_check.py) cannot rot between the rare sessions that have a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import helpers.attention as attention
from benchmarks import gpu_check
from benchmarks.gpu_check import CONFIGS, lesson_rows
from helpers.models import MODELS, ModelShape
from helpers.templates import IGNORE_INDEX
from helpers.tiny_model import ensure_tiny_model

REPO = Path(__file__).resolve().parent.parent
# Packages the GPU machine does not have (and that are too big to carry as wheels): gpu_check must not import them.
ABSENT_ON_GPU_MACHINE = ("jieba", "nltk", "rouge_chinese", "IPython", "modelscope", "gguf", "gradio", "matplotlib")


# Prevents: a GPU session spending its few minutes on a crash the CPU could have shown (the smoke mode runs every
# setting and the merge), a protocol that times warm-up steps, or dying at an import of a package only the course's
# own set-up installs (the same run lists what it imported).
@pytest.mark.slow
def test_smoke_run_covers_every_setting_merges_and_imports_only_what_the_gpu_machine_has(tmp_path):
    out = tmp_path / "gpu-smoke.json"
    run = ("import atexit, runpy, sys; "
           f"atexit.register(lambda: print('IMPORTED', [m for m in {ABSENT_ON_GPU_MACHINE!r} if m in sys.modules])); "
           f"sys.argv = ['gpu_check.py', '--smoke', '--budget-s', '3600', '--out', {str(out)!r}]; "
           "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", run], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IMPORTED []" in done.stdout, done.stdout[-500:]
    report = json.loads(out.read_text(encoding="utf-8"))
    runs = {run["label"]: run for run in report["runs"]}
    assert not [run for run in report["runs"] if "error" in run]
    assert {"old default", "new default", "faster", "scan 1", "scan 2"} <= set(runs)
    assert any(label.startswith("faster, checkpointing") for label in runs)
    old, new, faster = runs["old default"], runs["new default"], runs["faster"]
    assert (old["attention"], old["grad_accum"], old["frozen_dtype"]) == (attention.PACKED_SDPA, 2, "float32")
    assert new["attention"] == attention.fastest_attention() and faster["rows_per_step"] > new["rows_per_step"]
    for run in runs.values():  # one warm-up step excluded, one timed: tokens counted per micro-step
        assert (run["warmup_steps"], run["timed_steps"]) == (1, 1) and run["real_tokens_per_s"] > 0
        assert run["max_tokens"] >= run["tokens_per_step"] > 0 and run["estimated_mib"] > 0
    (model,) = report["models"]
    assert model["weights_mib"]["float32"] > model["weights_mib"]["bfloat16"]  # frozen weights halved
    assert model["merge"]["shards"] >= 1 and not model["skipped"]
    assert "old default" in done.stdout and "x old default" in done.stdout


# Prevents: a setting that fails (out of memory) ending the whole GPU check, or the results so far being lost.
@pytest.mark.slow
def test_a_failing_setting_is_recorded_and_the_check_goes_on(tmp_path, monkeypatch):
    calls = []

    def train_steps(model, tokenizer, shape, setting, warmup, timed, scratch):
        calls.append(setting.label)
        if setting.label == "new default":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return {"label": setting.label, "lesson": setting.lesson, "model_object": model, "rows_per_step": 2,
                "grad_accum": 1, "attention": "sdpa", "real_tokens_per_s": 1.0, "seconds_per_step": 1.0,
                "peak_mib": None, "lora_r": 8, "cutoff": 192, "checkpointing": True, "max_tokens": 64,
                "frozen_dtype": "float32", "tokens_per_step": 32}

    monkeypatch.setattr(gpu_check, "train_steps", train_steps)
    monkeypatch.setattr(gpu_check, "merge_adapter", lambda *args: None)
    report, out = {"models": [], "runs": []}, tmp_path / "partial.json"
    gpu_check.check_model(gpu_check.SMOLLM2, True, float("inf"), tmp_path, report, out)
    assert calls[:3] == ["old default", "new default", "faster"] and len(calls) == len(report["runs"])
    written = json.loads(out.read_text(encoding="utf-8"))["runs"]
    failed = [run for run in written if "error" in run]
    assert [run["label"] for run in failed] == ["new default"] and "out of memory" in failed[0]["error"]


# Prevents: a memory estimate that falls below a measured GPU peak (the fit refusal would come too late, and a
# 24 GB card would run out of memory mid-run) or is so far above it that the planner splits batches for nothing.
def test_estimator_brackets_every_committed_gpu_peak():
    files = sorted(gpu_check.RESULTS.glob("gpu-*.json"))
    assert files
    for file in files:
        runs = [run for run in json.loads(file.read_text(encoding="utf-8"))["runs"] if run.get("peak_mib")]
        assert runs, file
        for run in runs:
            ratio = gpu_check.estimated_mib(run) / run["peak_mib"]
            assert 1.0 <= ratio <= 1.15, (file.name, run["label"] if "label" in run else run["source"], ratio)


# Prevents: measuring a model of another size than the one the course table (and its batches) describe.
def test_committed_configs_are_the_table_models():
    for folder in CONFIGS.iterdir():
        model_id = folder.name.replace("--", "/")
        assert ModelShape.from_config(folder) == MODELS[model_id].shape, model_id


# Prevents: synthetic rows longer than the recipe's cutoff, or with nothing to learn (TRL drops such rows).
def test_lesson_rows_follow_the_cutoff_and_mask_the_prompt():
    rows = lesson_rows("tang", 16, cutoff=64, vocab_size=1000)
    assert len(rows) == 16
    for row in rows:
        assert 1 < len(row["input_ids"]) <= 64 and all(3 <= token < 1000 for token in row["input_ids"])
        learned = [label for label in row["labels"] if label != IGNORE_INDEX]
        assert learned and learned == row["input_ids"][len(row["input_ids"]) - len(learned):]
        assert row["labels"][0] == IGNORE_INDEX


# Prevents: a device synchronisation in every layer of every step on the GPU (the bounds are needed once per batch).
def test_packed_attention_finds_sample_bounds_once_per_forward(monkeypatch):
    calls = []
    original = attention.sample_bounds
    monkeypatch.setattr(attention, "sample_bounds", lambda ids: calls.append(1) or original(ids))
    model = AutoModelForCausalLM.from_pretrained(ensure_tiny_model(), dtype=torch.float32,
                                                 attn_implementation=attention.PACKED_SDPA)
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]])
    input_ids = torch.randint(3, 1000, position_ids.shape)
    with torch.no_grad():
        model(input_ids=input_ids, position_ids=position_ids)
        assert len(calls) == 1 < model.config.num_hidden_layers
        model(input_ids=input_ids, position_ids=position_ids.clone())  # a new batch: new bounds
    assert len(calls) == 2


# Prevents: a GPU training on the per-sample loop measured 2.3-2.8x slower there than sdpa (H200), or a CPU losing it.
def test_attention_is_chosen_per_device(monkeypatch):
    assert attention.fastest_attention() == attention.PACKED_SDPA  # this machine: no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: object() if name == "flash_attn" else None)
    assert attention.fastest_attention() == "flash_attention_2"
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: None)
    assert attention.fastest_attention() == "sdpa"

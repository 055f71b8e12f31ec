"""An interrupted training run resumes where it stopped, and a half-written checkpoint is never resumed from.

The real test trains the tiny model (cut to a few blocks: ``shallow_model``) in a subprocess, kills it with SIGKILL
(a closed laptop, a preempted AutoDL instance, a kernel killed for memory) once a checkpoint is on disk, then trains
again in a new process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers.paths import REPO_ROOT
from helpers.train import unfinished_checkpoint

MAX_STEPS = 3
# The course's own steps (notebooks 03-05), shrunk: 4 rows, 64 tokens, batch 1, a checkpoint after every step.
# Arguments: the output folder, the model folder.
TRAIN_SCRIPT = f"""
import json, sys
from transformers import AutoTokenizer
from helpers.encoding import encode_conversations
from helpers.hub_data import course_conversations
from helpers.hardware import compute_dtype
from helpers.profiles import Recipe, get_profile
from helpers.train import LossPlot, load_model_4bit, lora_config, make_trainer, sft_config, train

profile = get_profile("tiny")
recipe = Recipe(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-3, max_steps={MAX_STEPS}, batch_size=1,
                grad_accum=1, cutoff=64, warmup_steps=0, save_steps=1)
model_dir = sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(model_dir)
rows = encode_conversations(tokenizer, course_conversations("nekoqa", "train", 4, profile), recipe.cutoff)
model = load_model_4bit(model_dir, profile)
steps = LossPlot("resume test", live=False)  # records the step of every loss logged by this process
args = sft_config(recipe, sys.argv[1], compute_dtype(profile), profile.seed)
train(make_trainer(model, tokenizer, rows, lora_config(recipe), args, callbacks=[steps]))
print("LOGGED_STEPS", json.dumps(steps.steps))
"""
START_TIMEOUT_S = 600  # model load and the first step on 2 busy CPU cores


def run_env() -> dict[str, str]:
    # One torch thread: on 2 shared cores (pytest -n 2, other jobs) more threads spin and run ~10x slower.
    return {**os.environ, "COURSE_PROFILE": "tiny", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))


def complete_steps(output_dir: Path) -> list[int]:
    """Steps of the checkpoints whose trainer_state.json (the Trainer's last write) parses."""
    steps = []
    for folder in output_dir.glob("checkpoint-*"):
        try:
            steps.append(state(folder)["global_step"])
        except (OSError, ValueError, KeyError):
            continue
    return sorted(steps)


def kill_after_first_checkpoint(output_dir: Path, model_dir: Path, log: Path) -> tuple[int, float]:
    """Start training, SIGKILL it once a checkpoint is complete; return that step and the seconds it ran."""
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(output_dir), str(model_dir)],
                                   cwd=REPO_ROOT, env=run_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        while not complete_steps(output_dir):
            if process.poll() is not None:
                pytest.fail(f"training ended (rc {process.returncode}) first:\n{log.read_text()[-3000:]}")
            if time.perf_counter() - start > START_TIMEOUT_S:
                pytest.fail(f"no checkpoint after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return max(complete_steps(output_dir)), time.perf_counter() - start


@pytest.mark.slow
def test_killed_training_resumes_after_its_checkpoint_and_finishes(tmp_path, shallow_model):
    # Prevents: a run killed at step N restarting from step 0, or resuming from a checkpoint that does not load.
    output_dir = tmp_path / "checkpoints"
    killed_at, first_seconds = kill_after_first_checkpoint(output_dir, shallow_model, tmp_path / "first-run.log")
    assert killed_at < MAX_STEPS
    left = sorted(folder.name for folder in output_dir.glob("checkpoint-*"))

    start = time.perf_counter()
    resumed = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(output_dir), str(shallow_model)], cwd=REPO_ROOT,
                             env=run_env(),
                             capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming from checkpoint-{killed_at}" in resumed.stdout
    logged = json.loads(resumed.stdout.split("LOGGED_STEPS", 1)[1])
    assert logged[0] == killed_at + 1 and logged[-1] == MAX_STEPS  # continues after the checkpoint, ends at max_steps

    final = state(output_dir / f"checkpoint-{MAX_STEPS}")
    history = [entry["step"] for entry in final["log_history"] if "loss" in entry]
    assert final["global_step"] == MAX_STEPS and history == list(range(1, MAX_STEPS + 1))
    for folder in sorted(output_dir.glob("checkpoint-*")):  # every checkpoint left on disk loads
        assert state(folder)["global_step"] == int(folder.name.split("-")[1])
        weights = load_file(folder / "adapter_model.safetensors")
        assert any("lora_A" in key for key in weights) and any("lora_B" in key for key in weights)
    print(f"\nkilled after checkpoint-{killed_at} ({first_seconds:.0f} s, left {left}); "
          f"resumed at step {logged[0]}, finished step {logged[-1]} ({time.perf_counter() - start:.0f} s)")


def write_checkpoint(output_dir: Path, step: int, complete: bool, max_steps: int = 20) -> Path:
    """A fake ``checkpoint-N`` of a run: weights first, trainer_state.json last (cut short when not complete)."""
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "optimizer.pt").write_bytes(b"optimizer")
    if complete:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps}))
    return folder


@pytest.mark.parametrize("half_written_state", [None, '{"global_step": 1'], ids=["no-state", "cut-state"])
def test_half_written_checkpoint_is_skipped_for_the_previous_complete_one(tmp_path, capsys, half_written_state):
    # Prevents: resuming from a checkpoint the kill interrupted mid-save (missing optimizer, torn trainer_state.json).
    complete = write_checkpoint(tmp_path, 9, complete=True)
    half = write_checkpoint(tmp_path, 10, complete=False)
    if half_written_state is not None:
        (half / "trainer_state.json").write_text(half_written_state)
    assert unfinished_checkpoint(tmp_path, max_steps=20) == str(complete)  # 10 > 9: numeric, not text order
    assert "skipping checkpoint-10" in capsys.readouterr().out


def test_no_complete_checkpoint_or_finished_run_starts_fresh(tmp_path):
    # Prevents: a crash on a run whose only checkpoint is half-written, or a finished run "resuming" at its end.
    write_checkpoint(tmp_path, 2, complete=False)
    assert unfinished_checkpoint(tmp_path, max_steps=6) is None
    write_checkpoint(tmp_path, 6, complete=True, max_steps=6)
    assert unfinished_checkpoint(tmp_path, max_steps=6) is None
    assert unfinished_checkpoint(tmp_path / "missing", max_steps=6) is None


def test_a_finished_run_of_another_recipe_is_not_resumed(tmp_path, capsys):
    # Prevents: a retrain with more steps (force=True, an edited recipe) continuing the finished run's last
    # checkpoint, as if that run had been interrupted: the result would mix two recipes.
    write_checkpoint(tmp_path, 6, complete=True, max_steps=6)
    assert unfinished_checkpoint(tmp_path, max_steps=12) is None
    assert "checkpoint-6 is from another recipe (max_steps=6): training from scratch" in capsys.readouterr().out
    write_checkpoint(tmp_path, 8, complete=True, max_steps=12)  # the new run's own, interrupted: resumed
    assert unfinished_checkpoint(tmp_path, max_steps=12) == str(tmp_path / "checkpoint-8")

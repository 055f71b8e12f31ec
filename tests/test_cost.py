"""What a lesson costs, said before it runs; a clear refusal when it will not fit; CUDA out of memory as advice."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, TrainerCallback

from helpers import cost, lessons
from helpers import train as training
from helpers.cost import (
    GENERIC_ADVICE,
    HEADROOM,
    SEVEN_B,
    MemoryFitError,
    check_fits,
    cost_table,
    lesson_cost,
    lesson_settings,
    out_of_memory_error,
)
from helpers.data import encode_conversations
from helpers.hardware import compute_dtype
from helpers.hub_data import course_conversations
from helpers.memory import GIB, estimate
from helpers.models import MODELS
from helpers.profiles import GPU_MODEL_ID, TINY_MODEL_ID, get_profile
from helpers.tiny_model import ensure_tiny_model

LESSONS = ("nekoqa", "tang", "huanhuan", "nekoqa_dpo")
LLAMA_3B = "meta-llama/Llama-3.2-3B-Instruct"
LLAMA_2 = "meta-llama/Llama-2-7b-chat-hf"
QWEN_15B = "Qwen/Qwen2.5-1.5B-Instruct"
CHINESE = re.compile(r"[\u4e00-\u9fff]")
BATCH_ADVICE = re.compile(r"per_device_train_batch_size=(\d+), gradient_accumulation_steps=(\d+)")
CUTOFF_ADVICE = re.compile(r"cutoff \(max_length\) (\d+)")
MODEL_ADVICE = re.compile(r"COURSE_MODEL=(\S+)")
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def gpu_recipe(model_id: str, lesson: str):
    return get_profile("gpu", model=model_id).recipe(lesson)


def refusal(model_id: str, lesson: str, capacity_gib: int) -> str:
    with pytest.raises(MemoryFitError) as refused:
        check_fits(model_id, lesson, gpu_recipe(model_id, lesson), capacity=capacity_gib * GIB,
                   gpu_name=f"fake {capacity_gib}GB")
    return str(refused.value)


# --- 6. a recipe that does not fit is refused before loading, with advice that fits ------------------------------


# Prevents: a 7B model on an 8 GB card loading for minutes and dying with CUDA out of memory mid-training.
def test_recipe_too_big_for_the_gpu_is_refused_with_advice(capsys):
    message = refusal(SEVEN_B, "nekoqa", 8)
    assert re.search(r"per_device_train_batch_size=\d+|cutoff|COURSE_MODEL=", message), message
    assert CHINESE.search(message) and "out of memory" in message
    assert "fake 8GB" in message and "8.0 GiB" in message
    assert "fake 8GB" in capsys.readouterr().out  # the estimate was printed before the refusal


# Prevents: a run that fits being refused, or its estimate not shown before a long training.
def test_recipe_that_fits_returns_and_prints_the_estimate(capsys):
    recipe = gpu_recipe(SEVEN_B, "nekoqa")
    needed = check_fits(SEVEN_B, "nekoqa", recipe, capacity=80 * GIB, gpu_name="fake 80GB")
    out = capsys.readouterr().out
    assert 8 * GIB * HEADROOM < needed.total <= 80 * GIB * HEADROOM  # consistent with the 8 GB refusal above
    assert f"{needed.total / GIB:.1f} GiB" in out and "fake 80GB" in out and "80.0 GiB" in out
    assert f"{recipe.batch_size} x {recipe.cutoff}" in out


# Prevents: the lesson loading a model for minutes (or starting to train) before saying the run cannot fit.
def test_training_lesson_is_refused_before_the_model_loads(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cost, "gpu_memory", lambda: ("fake 0.5GB", GIB // 2))
    monkeypatch.setattr(lessons, "adapter_dir", lambda lesson, profile: tmp_path / "adapter")
    monkeypatch.setattr(lessons, "load_model_4bit", lambda *args, **kwargs: pytest.fail("loaded before the check"))
    with pytest.raises(MemoryFitError, match="fake 0.5GB"):
        lessons.train_lesson("nekoqa", profile=get_profile("tiny"), force=True)
    assert not (tmp_path / "adapter" / ".course-complete").exists()


# Scenarios whose advice includes a smaller batch, a shorter cutoff and/or another model.
ADVICE_CASES = [(SEVEN_B, "nekoqa", 8), (LLAMA_3B, "nekoqa", 8), (LLAMA_2, "huanhuan", 8), (QWEN_15B, "nekoqa_dpo", 12),
                (SEVEN_B, "nekoqa_dpo", 12), (SEVEN_B, "nekoqa", 16), ("meta-llama/Llama-3.1-8B-Instruct", "tang", 8)]


# Prevents: advice that, when followed, is refused again (or runs out of memory): a batch or cutoff that still
# does not fit, or an accumulation that changes the effective batch.
@pytest.mark.parametrize(("model_id", "lesson", "capacity_gib"), ADVICE_CASES)
def test_batch_and_cutoff_advice_fit(model_id, lesson, capacity_gib):
    recipe, shape = gpu_recipe(model_id, lesson), MODELS[model_id].shape
    message = refusal(model_id, lesson, capacity_gib)
    limit = capacity_gib * GIB * HEADROOM
    assert BATCH_ADVICE.search(message) or CUTOFF_ADVICE.search(message) or MODEL_ADVICE.search(message), message
    if found := BATCH_ADVICE.search(message):
        batch, accumulation = int(found[1]), int(found[2])
        assert batch < recipe.batch_size and batch * accumulation == recipe.batch_size * recipe.grad_accum
        lowered = dataclasses.replace(recipe, batch_size=batch, grad_accum=accumulation)
        assert estimate(shape, lesson_settings(lesson, lowered)).total <= limit
    if found := CUTOFF_ADVICE.search(message):
        cutoff = int(found[1])
        assert cutoff < recipe.cutoff
        lowered = dataclasses.replace(recipe, batch_size=1, cutoff=cutoff)
        assert estimate(shape, lesson_settings(lesson, lowered)).total <= limit


# Prevents: "COURSE_MODEL=X" advice that is refused again once followed: COURSE_MODEL=X brings X's own 24 GB batches
# (e.g. Qwen2.5-1.5B: 8 x 1 at cutoff 2048 for nekoqa, ~8.7 GiB), so X must be checked with those.
@pytest.mark.parametrize(("model_id", "lesson", "capacity_gib"), [
    (SEVEN_B, "nekoqa", 8),
    (SEVEN_B, "nekoqa", 12),
    (SEVEN_B, "nekoqa", 16),
    (LLAMA_3B, "nekoqa", 12),
])
def test_advised_model_fits_with_its_own_recipe(model_id, lesson, capacity_gib):
    message = refusal(model_id, lesson, capacity_gib)
    found = MODEL_ADVICE.search(message)
    assert found, message
    advised = found[1]
    assert advised in MODELS and advised != model_id
    needed = estimate(MODELS[advised].shape, lesson_settings(lesson, gpu_recipe(advised, lesson))).total
    assert needed <= capacity_gib * GIB * HEADROOM, f"COURSE_MODEL={advised} needs {needed / GIB:.1f} GiB"


# Prevents: advice to lower things that cannot help, when even batch 1 at a quarter of the cutoff does not fit.
def test_nothing_fits_says_to_use_a_bigger_gpu():
    message = refusal(SEVEN_B, "nekoqa_dpo", 8)
    assert "more memory" in message
    assert not BATCH_ADVICE.search(message) and not CUTOFF_ADVICE.search(message)


# Prevents: a model outside the table (a local folder) getting no estimate, or one for the wrong architecture.
def test_model_folder_shape_comes_from_its_config(tmp_path):
    folder = tmp_path / "my-own-chat-model"
    folder.mkdir()
    shutil.copy(ensure_tiny_model() / "config.json", folder / "config.json")
    recipe = gpu_recipe(GPU_MODEL_ID, "nekoqa")
    from_folder = check_fits(folder, "nekoqa", recipe, capacity=80 * GIB)
    assert from_folder == check_fits(str(folder), "nekoqa", recipe, capacity=80 * GIB)
    assert from_folder == check_fits(MODELS[TINY_MODEL_ID].shape, "nekoqa", recipe, capacity=80 * GIB)
    assert from_folder == check_fits(ensure_tiny_model(), "nekoqa", recipe, capacity=80 * GIB)

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["num_hidden_layers"] *= 2
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    deeper = check_fits(folder, "nekoqa", recipe, capacity=80 * GIB)
    assert deeper.weights > from_folder.weights and deeper.total > from_folder.total

    with pytest.raises(MemoryFitError, match="unknown model"):
        check_fits(str(tmp_path / "no-such-model"), "nekoqa", recipe, capacity=80 * GIB)


# --- 7. CUDA out of memory during training becomes advice; the last complete checkpoint stays usable -----------


class StopAt(TrainerCallback):
    """Stops training after ``step`` (once), as an out-of-memory would: checkpoints up to it are on disk."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if self.step and state.global_step >= self.step:
            control.should_training_stop = True
            self.step = 0


def file_digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


# Prevents: a CUDA out-of-memory traceback with no advice, and (worse) losing or damaging the checkpoint the
# run should resume from after lowering the batch.
def test_out_of_memory_during_training_becomes_advice_and_keeps_the_checkpoint(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(cost, "gpu_memory", lambda: None)  # the advice below is for the estimate's own size
    profile = get_profile("tiny")
    model_dir = ensure_tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    recipe = dataclasses.replace(profile.recipe("nekoqa"), max_steps=4, batch_size=2, save_steps=1)
    rows = encode_conversations(tokenizer, course_conversations("nekoqa", "train", 2, profile), 64)
    model = training.load_model_4bit(model_dir, profile)
    args = training.sft_config(recipe, tmp_path / "checkpoints", compute_dtype(profile), profile.seed)
    trainer = training.make_trainer(model, tokenizer, rows, training.lora_config(recipe, profile.lora_targets), args,
                                    callbacks=[StopAt(2)])
    training.train(trainer, "nekoqa", recipe)
    checkpoint = tmp_path / "checkpoints" / "checkpoint-2"
    assert training.unfinished_checkpoint(tmp_path / "checkpoints", recipe.max_steps) == str(checkpoint)
    before = file_digests(checkpoint)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError(OOM)

    monkeypatch.setattr(trainer, "train", out_of_memory)
    with pytest.raises(MemoryFitError) as failure:
        training.train(trainer, "nekoqa", recipe)
    message = str(failure.value)
    assert isinstance(failure.value.__cause__, torch.OutOfMemoryError)
    assert "checkpoint-2" in message and "CUDA out of memory" in message and CHINESE.search(message)
    shape = MODELS[TINY_MODEL_ID].shape  # the model's shape from the table, not from the trainer
    needed = estimate(shape, lesson_settings("nekoqa", recipe)).total
    assert cost.advice(shape, "nekoqa", recipe, needed) in message  # what check_fits would say at that size

    with pytest.raises(MemoryFitError) as generic:
        training.train(trainer)  # the notebooks' call: no recipe
    assert "checkpoint-2" in str(generic.value) and GENERIC_ADVICE in str(generic.value)
    assert file_digests(checkpoint) == before

    monkeypatch.undo()  # the real train() again: the rerun resumes from the kept checkpoint and finishes
    training.train(trainer, "nekoqa", recipe)
    assert trainer.state.global_step == recipe.max_steps
    steps = [entry["step"] for entry in trainer.state.log_history if "loss" in entry]
    assert steps[-2:] == [3, 4]


# Prevents: out-of-memory advice that only says "more memory" when a smaller micro-batch would do, and a message
# that points at a checkpoint when none had been saved.
def test_out_of_memory_advice_on_a_real_card(monkeypatch):
    monkeypatch.setattr(cost, "gpu_memory", lambda: ("fake 24GB", 24 * GIB))
    recipe = gpu_recipe(SEVEN_B, "nekoqa")
    message = str(out_of_memory_error("nekoqa", recipe, MODELS[SEVEN_B].shape, None))
    found = BATCH_ADVICE.search(message)
    assert found and int(found[1]) < recipe.batch_size, message
    assert "no checkpoint had been saved yet" in message and CHINESE.search(message)


# --- 8. the cost table: every figure an estimate, and consistent --------------------------------------------------


# Prevents: a cost table without the 7B model (the first thing students ask) or figures passed off as measured.
@pytest.mark.parametrize("lesson", LESSONS)
def test_cost_table_names_both_models_as_estimates(lesson):
    table = cost_table(lesson)
    for model_id in (GPU_MODEL_ID, SEVEN_B):
        assert model_id.rsplit("/", 1)[-1] in table
    assert "estimate" in table and "估算" in table


# Prevents: a cost table whose rows, time or memory contradict the recipes the lessons really run.
@pytest.mark.parametrize("lesson", LESSONS)
def test_lesson_cost_is_consistent_with_the_recipes(lesson):
    small, large = lesson_cost(lesson, GPU_MODEL_ID), lesson_cost(lesson, SEVEN_B)
    for model_id, row in ((GPU_MODEL_ID, small), (SEVEN_B, large)):
        recipe = gpu_recipe(model_id, lesson)
        assert row["steps"] == recipe.max_steps
        assert row["rows"] == recipe.max_steps * recipe.batch_size * recipe.grad_accum
        assert row["batch"] == f"{recipe.batch_size}x{recipe.grad_accum}"
        assert row["tokens"] > 0
    assert small["rows"] == large["rows"] and small["tokens"] == large["tokens"]  # same data, same effective batch
    assert large["seconds"] > small["seconds"] and large["peak_gib"] > small["peak_gib"]
    assert large["peak_gib"] <= 24  # the 7B model fits the card the table is for

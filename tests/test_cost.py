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
    NO_CHECKPOINT_SHARE,
    PLAN_SHARE,
    RTX_4090,
    SEVEN_B,
    MemoryFitError,
    check_fits,
    cost_table,
    fitted_runs,
    lesson_cost,
    lesson_settings,
    minutes,
    needed_bytes,
    out_of_memory_error,
    plan_batch,
    planned_recipe,
    shipped_lengths,
    step_cost,
)
from helpers.encoding import encode_conversations
from helpers.hardware import compute_dtype
from helpers.hub_data import course_conversations
from helpers.memory import GIB, estimate
from helpers.models import MODELS
from helpers.profiles import GPU_MODEL_ID, TINY_MODEL_ID, get_profile
from helpers.registry import LESSONS, SFT_LESSONS
from helpers.tiny_model import ensure_tiny_model

LLAMA_3B = "meta-llama/Llama-3.2-3B-Instruct"
LLAMA_2 = "meta-llama/Llama-2-7b-chat-hf"
QWEN_15B = "Qwen/Qwen2.5-1.5B-Instruct"
CHINESE = re.compile(r"[\u4e00-\u9fff]")
BATCH_ADVICE = re.compile(r"per_device_train_batch_size=(\d+), gradient_accumulation_steps=(\d+)")
CUTOFF_ADVICE = re.compile(r"cutoff \(max_length\) (\d+)")
MODEL_ADVICE = re.compile(r"COURSE_MODEL=(\S+)")
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def gpu_recipe(model_id: str, lesson: str):
    """The lesson's recipe with all its rows per step in one micro-batch: what plan_batch tries first."""
    seed = get_profile("gpu", model=model_id).recipe(lesson)
    return dataclasses.replace(seed, batch_size=seed.rows_per_step, grad_accum=1)


def table_recipe(model_id: str, lesson: str):
    """The lesson's recipe as plan_batch splits it for a 24 GB card on the shipped rows: the cost table's row."""
    lengths = None if lesson == "nekoqa_dpo" else shipped_lengths(lesson)
    seed = get_profile("gpu", model=model_id).recipe(lesson)
    return planned_recipe(MODELS[model_id].shape, lesson, seed, 24 * GIB, lengths)


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
    monkeypatch.setattr(lessons, "adapter_dir", lambda lesson, profile, variant="": tmp_path / "adapter")
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


# Prevents: "COURSE_MODEL=X" advice that is refused again once followed: X's run splits the lesson's batch for the
# same card (plan_batch), so X must be checked with that split.
@pytest.mark.parametrize(("model_id", "lesson", "capacity_gib"), [
    (SEVEN_B, "nekoqa", 8),
    (SEVEN_B, "nekoqa", 12),
    (SEVEN_B, "nekoqa", 16),
    (LLAMA_3B, "nekoqa", 8),
])
def test_advised_model_fits_with_its_own_recipe(model_id, lesson, capacity_gib):
    message = refusal(model_id, lesson, capacity_gib)
    found = MODEL_ADVICE.search(message)
    assert found, message
    advised = found[1]
    assert advised in MODELS and advised != model_id
    shape, seed = MODELS[advised].shape, get_profile("gpu").recipe(lesson)
    assert shape.parameters() < MODELS[model_id].shape.parameters()
    needed = needed_bytes(shape, lesson, planned_recipe(shape, lesson, seed, capacity_gib * GIB))
    assert needed <= capacity_gib * GIB * HEADROOM, f"COURSE_MODEL={advised} needs {needed / GIB:.1f} GiB"


# Prevents: advice to lower things that cannot help, when even batch 1 at a quarter of the cutoff does not fit.
def test_nothing_fits_says_to_use_a_bigger_gpu():
    message = refusal(SEVEN_B, "nekoqa_dpo", 4)
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
@pytest.mark.slow
def test_out_of_memory_during_training_becomes_advice_and_keeps_the_checkpoint(tmp_path, monkeypatch, one_thread,
                                                                               shallow_model):
    monkeypatch.setattr(cost, "gpu_memory", lambda: None)  # the advice below is for the estimate's own size
    profile = get_profile("tiny")
    model_dir = shallow_model  # the mechanics of the error and the checkpoint; the advice reads the table's shape
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
        recipe = table_recipe(model_id, lesson)
        assert row["steps"] == recipe.max_steps
        assert row["rows"] == recipe.max_steps * recipe.batch_size * recipe.grad_accum
        assert row["batch"] == f"{recipe.batch_size}x{recipe.grad_accum}"
        assert row["tokens"] > 0
    assert small["rows"] == large["rows"] and small["tokens"] == large["tokens"]  # same data, same effective batch
    assert large["seconds"] > small["seconds"]
    assert max(small["peak_gib"], large["peak_gib"]) <= 24 * PLAN_SHARE  # both fit the card the table is for


# --- 9. the batch split: as few micro-steps as the card holds; tables, memory line and run agree ------------------


# Prevents: paying the GPU's ~0.6 s per micro-step many times (measured on an H200) when the whole batch fits, or a
# split that changes the recipe (rows per optimizer step, steps, learning rate).
@pytest.mark.parametrize("lesson", SFT_LESSONS)
@pytest.mark.parametrize("model_id", [GPU_MODEL_ID, SEVEN_B])
def test_whole_batch_in_one_micro_step_when_it_fits(lesson, model_id):
    shape, seed = MODELS[model_id].shape, get_profile("gpu").recipe(lesson)
    roomy = planned_recipe(shape, lesson, seed, 141 * GIB, shipped_lengths(lesson))
    assert (roomy.batch_size, roomy.grad_accum) == (seed.rows_per_step, 1)
    for capacity in (8 * GIB, 12 * GIB, 24 * GIB, 141 * GIB):
        planned = planned_recipe(shape, lesson, seed, capacity, shipped_lengths(lesson))
        assert dataclasses.replace(planned, batch_size=seed.batch_size, grad_accum=seed.grad_accum,
                                   checkpointing=True) == seed
        if planned.rows_per_step != seed.rows_per_step:  # nothing fits: left for check_fits to refuse
            continue
        assert needed_bytes(shape, lesson, planned, shipped_lengths(lesson)) <= capacity * PLAN_SHARE
        without = dataclasses.replace(planned, checkpointing=False)
        fits_without = needed_bytes(shape, lesson, without, shipped_lengths(lesson)) <= capacity * NO_CHECKPOINT_SHARE
        assert planned.checkpointing != fits_without  # checkpointing only when needed
        if planned.batch_size < seed.rows_per_step:  # a larger micro-batch would not have fitted
            larger = dataclasses.replace(planned, batch_size=planned.batch_size * 2, checkpointing=True)
            assert needed_bytes(shape, lesson, larger, shipped_lengths(lesson)) > capacity * PLAN_SHARE


# Prevents: a cost table that prints one batch split while the run (and its memory line) uses another.
@pytest.mark.parametrize("lesson", LESSONS)
def test_table_batches_are_what_the_default_gpu_profile_runs(lesson, monkeypatch, capsys):
    monkeypatch.setattr(cost, "gpu_memory", lambda: ("fake 24GB", 24 * GIB))
    table = cost_table(lesson)
    for model_id in (GPU_MODEL_ID, SEVEN_B):
        lengths = None if lesson == "nekoqa_dpo" else shipped_lengths(lesson)
        run = plan_batch(model_id, lesson, get_profile("gpu", model=model_id).recipe(lesson), lengths)
        printed = capsys.readouterr().out
        assert f"{run.batch_size} x {run.grad_accum}" in printed and "fake 24GB" in printed
        row = lesson_cost(lesson, model_id)
        assert row["batch"] == f"{run.batch_size}x{run.grad_accum}" and row["checkpointing"] == run.checkpointing
        assert re.search(rf"{model_id.rsplit('/', 1)[-1]}\s+seed\s+{row['batch']}\s", table), table


# Prevents: a CPU run splitting its rows per step for a card it does not have, or recomputing activations it has
# the RAM to keep (a quarter of each tiny step, benchmarks/checkpointing.py); the GPU estimate is still printed.
def test_without_a_gpu_only_checkpointing_is_switched_off(capsys):
    recipe = get_profile("tiny").recipe("nekoqa")
    assert recipe.checkpointing
    assert plan_batch(TINY_MODEL_ID, "nekoqa", recipe) == dataclasses.replace(recipe, checkpointing=False)
    printed = capsys.readouterr().out
    assert "no GPU here" in printed and "checkpointing off on CPU" in printed


# Prevents: a faster recipe that quietly trains on fewer rows (or more), or keeps the small batch's learning rate.
@pytest.mark.parametrize("lesson", SFT_LESSONS)
@pytest.mark.parametrize("profile_name", ["tiny", "gpu"])
def test_faster_recipe_sees_the_same_rows_in_fewer_steps(lesson, profile_name):
    profile = get_profile(profile_name)
    seed, fast = profile.recipe(lesson), profile.faster_recipe(lesson)
    factor = fast.rows_per_step / seed.rows_per_step
    assert factor > 1 and fast.max_steps < seed.max_steps
    assert abs(fast.max_steps * fast.rows_per_step - seed.max_steps * seed.rows_per_step) <= fast.rows_per_step / 2
    assert fast.learning_rate == pytest.approx(seed.learning_rate * factor**0.5, rel=0.05)
    assert (fast.lora_r, fast.cutoff, fast.train_rows) == (seed.lora_r, seed.cutoff, seed.train_rows)


# Prevents: a cost table whose faster recipe is not faster, or that drops it.
@pytest.mark.parametrize("lesson", SFT_LESSONS)
def test_cost_table_offers_the_faster_recipe(lesson):
    assert "faster" in cost_table(lesson)
    for model_id in (GPU_MODEL_ID, SEVEN_B):
        seed, fast = lesson_cost(lesson, model_id), lesson_cost(lesson, model_id, faster=True)
        assert fast["seconds"] < seed["seconds"] and fast["steps"] < seed["steps"]


# --- 10. time from the GPU measurements ----------------------------------------------------------------------------


# Prevents: cost tables built on a guess (the old "20% of the peak") instead of the committed H200 runs, or a fit
# that does not describe them (each measured step within 45% of the fitted one: the fixed cost itself varied by
# +-0.1 s between repeated runs of one setting).
def test_step_cost_is_fitted_to_the_committed_measurements():
    fit = step_cost()
    assert fit.runs == len(fitted_runs()) >= 6
    assert 0.3 < fit.fixed_s < 1.0  # the H200's fixed cost per micro-step
    for run in fitted_runs():
        predicted = fit.seconds(MODELS[run["model"]].shape.parameters(), run["tokens_per_step"])
        assert predicted == pytest.approx(run["seconds_per_step"], rel=0.45), run
    slower = fit.on(RTX_4090)
    assert slower.fixed_s == fit.fixed_s and slower.flops < fit.flops


# Prevents: "约 0 分钟" (about 0 minutes) for a run that takes seconds.
def test_durations_are_never_printed_as_zero():
    assert minutes(5) == "5 s" and minutes(0.2) == "1 s" and minutes(90) == "1.5 min"
    assert "0 min" not in lessons.training_time("nekoqa", get_profile("gpu"))


# Prevents: a notebook whose edited recipe (learning rate, steps, rows per step) is printed but not what trains, or
# a faster run overwriting the lesson's own adapter.
def test_the_notebooks_recipe_is_what_trains(monkeypatch, tmp_path):
    trained = []
    monkeypatch.setattr(lessons, "outputs_dir", lambda *parts: tmp_path.joinpath(*parts))
    monkeypatch.setattr(lessons, "fit", lambda run, profile, checkpoints, **kwargs: trained.append((run, checkpoints)))
    monkeypatch.setattr(lessons, "save_adapter", lambda trainer, tokenizer, target: None)
    profile = get_profile("tiny")
    edited = dataclasses.replace(profile.recipe("huanhuan"), learning_rate=1e-5, max_steps=2, train_rows=12)
    target = lessons.train_lesson("huanhuan", profile, force=True, recipe=edited, variant="faster")
    (run, checkpoints), = trained
    assert run.recipe == dataclasses.replace(edited, checkpointing=False) and len(run.train_rows) == 12  # CPU plan
    assert target.name == checkpoints.name == "huanhuan-tiny-faster"
    assert lessons.adapter_dir("huanhuan", profile).name == "huanhuan-tiny"

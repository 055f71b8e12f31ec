"""COURSE_MODEL: the course's table of models, hub ids, 24 GB batches, and any other chat model via all-linear LoRA."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from helpers.cost import SEVEN_B, lesson_settings
from helpers.download import DownloadError, Source, download_model, local_folder_name
from helpers.encoding import encode_conversations
from helpers.hardware import compute_dtype
from helpers.hub_data import course_conversations
from helpers.memory import GIB, estimate
from helpers.models import (
    ALL_LINEAR,
    MODEL_ENV,
    MODELS,
    SEVEN_PROJECTIONS,
    ModelChoiceError,
    find_model,
    gated_hint,
    hub_ids,
)
from helpers.profiles import GPU_MODEL_ID, get_profile
from helpers.registry import LESSONS
from helpers.train import load_model_4bit, lora_config, make_trainer, sft_config, train

LLAMA_3B = "meta-llama/Llama-3.2-3B-Instruct"
CHINESE = re.compile(r"[\u4e00-\u9fff]")


def fake_source(name, calls, fail=None, files=None):
    """A hub that records the id it was asked for, then fails or writes ``files`` ({name: text})."""
    files = files or {"config.json": "{}", "model.safetensors": "x"}

    def fetch(model_id, target: Path):
        calls.append((name, model_id))
        if fail:
            raise fail
        target.mkdir(parents=True, exist_ok=True)
        for file, text in files.items():
            (target / file).write_text(text)

    return Source(name, lambda: "local", fetch)


def copy_model(source: Path, target: Path) -> Path:
    """A copy of a model folder (SmolLM2's) under a name the course's table does not know."""
    shutil.copytree(source, target)
    assert find_model(str(target)) is None
    return target


def remove_chat_template(folder: Path) -> None:
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config), encoding="utf-8")


# --- 1. COURSE_MODEL picks the table's entry: ids, LoRA targets, 24 GB batches, output names ---------------------


# Prevents: COURSE_MODEL being ignored, or a model change silently changing the lesson's recipe (learning rate,
# steps, rows per optimizer step): only how those rows are split into micro-batches depends on the model and card.
@pytest.mark.parametrize("hf_id", list(MODELS))
def test_course_model_env_chooses_the_table_entry(monkeypatch, hf_id):
    plain = get_profile("gpu")
    monkeypatch.setenv(MODEL_ENV, hf_id)
    profile = get_profile("gpu")
    known = MODELS[hf_id]
    assert profile.model_id == hf_id
    assert profile.lora_targets == known.lora_targets
    for lesson in LESSONS:
        assert profile.recipe(lesson) == plain.recipe(lesson), lesson
    if hf_id == GPU_MODEL_ID:
        assert profile.run_name == "gpu"
    else:
        assert profile.run_name != "gpu"


# Prevents: two models' adapters and predictions overwriting each other in outputs/ (same run name).
def test_each_model_writes_to_its_own_outputs():
    names = {get_profile("gpu", model=hf_id).run_name for hf_id in MODELS}
    assert len(names) == len(MODELS)
    assert get_profile("gpu").run_name == "gpu"


def lookup_variants(hf_id: str, tmp_path: Path) -> list[str]:
    known = MODELS[hf_id]
    folders = [tmp_path / known.name, tmp_path / local_folder_name(hf_id), tmp_path / local_folder_name(
        known.modelscope_id)]
    for folder in folders:
        folder.mkdir(exist_ok=True)
    return [hf_id, hf_id.lower(), known.modelscope_id, known.name, f" {hf_id} ",
            *(str(folder) for folder in folders), f"{folders[0]}/"]


# Prevents: a model asked for by its ModelScope id, its bare name or its downloaded folder losing its batches,
# LoRA targets and template (falling back to all-linear and the default batch).
@pytest.mark.parametrize("hf_id", list(MODELS))
def test_every_way_of_naming_a_model_finds_it(hf_id, tmp_path):
    for name in lookup_variants(hf_id, tmp_path):
        assert find_model(name) is MODELS[hf_id], name


# Prevents: a base model or an unrelated folder being treated as a known chat model (wrong template and batches).
@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-7B", "Qwen2.5-7B", "meta-llama/Llama-3.2-3B",
                                  "my-own-chat-model", "/data/models/my-own-chat-model", "", "Qwen"])
def test_unknown_names_are_not_in_the_table(name):
    assert find_model(name) is None


# --- 2. each hub is asked for the id it knows; gated models say what to do ----------------------------------------


# Prevents: ModelScope being asked for "meta-llama/..." (its Llama copies live under LLM-Research/...).
def test_hub_ids_per_source(tmp_path):
    assert hub_ids(LLAMA_3B) == {"ModelScope": "LLM-Research/Llama-3.2-3B-Instruct", "Hugging Face": LLAMA_3B}
    for hf_id, known in MODELS.items():
        assert hub_ids(hf_id) == {"ModelScope": known.modelscope_id, "Hugging Face": hf_id}
        assert hub_ids(known.modelscope_id) == {"ModelScope": known.modelscope_id, "Hugging Face": hf_id}
    assert hub_ids("org/unknown-model") == {"ModelScope": "org/unknown-model", "Hugging Face": "org/unknown-model"}
    folder = tmp_path / "Qwen2.5-7B-Instruct"
    folder.mkdir()
    assert hub_ids(str(folder)) == {"ModelScope": str(folder), "Hugging Face": str(folder)}


# Prevents: COURSE_MODEL=unsloth/Llama-3.2-3B-Instruct (an ungated re-upload, chosen to avoid Meta's licence
# request) silently downloading meta-llama's gated repo instead.
def test_another_organisations_copy_is_downloaded_as_asked():
    for model_id in ("unsloth/Llama-3.2-3B-Instruct", "someone/Qwen2.5-7B-Instruct"):
        assert hub_ids(model_id)["Hugging Face"] == model_id


# Prevents: the download of a Llama model asking both hubs for the same id, so ModelScope never finds it.
def test_download_asks_each_hub_for_its_own_id(isolated_cache, reachable):
    calls = []
    sources = (fake_source("ModelScope", calls, fail=OSError("not found")), fake_source("Hugging Face", calls))
    path = download_model(LLAMA_3B, profile=get_profile("gpu"), sources=sources)
    assert calls == [("ModelScope", "LLM-Research/Llama-3.2-3B-Instruct"), ("Hugging Face", LLAMA_3B)]
    assert (path / "config.json").is_file()


def failed_download(model_id: str, hugging_face_error: str) -> tuple[str, list]:
    """The DownloadError message when both fake hubs fail, and the calls they saw."""
    calls = []
    sources = (fake_source("ModelScope", calls, fail=OSError("not found")),
               fake_source("Hugging Face", calls, fail=OSError(hugging_face_error)))
    with pytest.raises(DownloadError) as failure:
        download_model(model_id, profile=get_profile("gpu"), sources=sources)
    return str(failure.value), calls


# Prevents: a bare "401 Unauthorized" when Hugging Face refuses a gated Llama, with no word of the licence or the
# ModelScope copy that needs none.
def test_gated_model_failure_says_how_to_get_it(isolated_cache, reachable):
    message, _ = failed_download(LLAMA_3B, "401 Client Error: gated repo")
    assert f"https://huggingface.co/{LLAMA_3B}" in message
    assert "LLM-Research/Llama-3.2-3B-Instruct" in message and "hf auth login" in message
    assert gated_hint(LLAMA_3B) in message


# Prevents: a licence hint for Qwen (not gated) sending students to a request page that does not exist.
def test_ungated_model_failure_has_no_licence_hint(isolated_cache, reachable):
    message, calls = failed_download(SEVEN_B, "timeout")
    assert gated_hint(SEVEN_B) == ""
    assert "huggingface.co/" not in message and "hf auth login" not in message and "licence" not in message
    assert [name for name, _ in calls] == ["ModelScope", "Hugging Face"]


# --- 3. every table entry fits a 24 GB card ----------------------------------------------------------------------


# Prevents: COURSE_MODEL=<a table model> running out of memory on the course's 24 GB card (RTX 4090 / 3090).
@pytest.mark.parametrize("lesson", LESSONS)
@pytest.mark.parametrize("hf_id", list(MODELS))
def test_every_table_model_fits_24gb_with_headroom(hf_id, lesson):
    recipe = get_profile("gpu", model=hf_id).recipe(lesson)
    needed = estimate(MODELS[hf_id].shape, lesson_settings(lesson, recipe)).total
    assert needed <= 0.75 * 24 * GIB, f"{hf_id} {lesson}: {needed / GIB:.1f} GiB"


# --- 4. any chat model outside the table trains, LoRA on all its linear layers -----------------------------------


# Prevents: a model outside the table failing on "target modules not found" (its layers are named differently),
# or LoRA landing on lm_head, instead of training on all its linear layers.
@pytest.mark.slow
def test_unknown_chat_model_trains_with_all_linear(tmp_path, capsys, one_thread, shallow_model):
    from helpers import models

    folder = copy_model(shallow_model, tmp_path / "my-own-chat-model")
    models._say_all_linear.cache_clear()
    capsys.readouterr()
    profile = get_profile("tiny", model=str(folder))
    said = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert profile.lora_targets == ALL_LINEAR
    assert len(said) == 1 and str(folder) in said[0] and ALL_LINEAR in said[0], said

    model_dir = download_model(profile=profile)
    assert model_dir == folder
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    recipe = dataclasses.replace(profile.recipe("nekoqa"), max_steps=1, batch_size=2, save_steps=1)
    rows = encode_conversations(tokenizer, course_conversations("nekoqa", "train", 2, profile), 64)
    model = load_model_4bit(model_dir, profile)
    args = sft_config(recipe, tmp_path / "checkpoints", compute_dtype(profile), profile.seed)
    trainer = make_trainer(model, tokenizer, rows, lora_config(recipe, profile.lora_targets), args)
    train(trainer, "nekoqa", recipe)
    assert trainer.state.global_step == 1
    assert all(entry["loss"] == entry["loss"] for entry in trainer.state.log_history if "loss" in entry)  # not NaN

    trainer.save_model(str(tmp_path / "adapter"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
    # all-linear: every projection, not lm_head (peft writes full names when there are few, as here, else suffixes)
    assert {name.rsplit(".", 1)[-1] for name in config["target_modules"]} == set(SEVEN_PROJECTIONS)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


# --- 5. a model without a chat template is refused with what to choose instead ----------------------------------


# Prevents: a base model training on prompts its chat cannot reproduce, or a cryptic "Cannot use chat template
# functions because tokenizer.chat_template is not set" deep in training.
def test_model_without_chat_template_is_refused(tmp_path, shallow_model):
    folder = copy_model(shallow_model, tmp_path / "my-base-model")
    remove_chat_template(folder)
    with pytest.raises(ModelChoiceError) as refused:
        download_model(str(folder), profile=get_profile("tiny"))
    message = str(refused.value)
    assert "chat_template" in message and "-Instruct" in message and CHINESE.search(message)
    assert str(folder) in message


# Prevents: a base model downloaded from a hub reaching training (the check must also run after a download).
def test_downloaded_base_model_is_refused(isolated_cache, reachable):
    calls = []
    files = {"config.json": "{}", "tokenizer.json": "{}", "tokenizer_config.json": json.dumps({"eos_token": "x"})}
    with pytest.raises(ModelChoiceError, match="chat_template"):
        download_model("org/some-base-model", profile=get_profile("gpu"),
                       sources=(fake_source("ModelScope", calls, files=files),))
    assert calls == [("ModelScope", "org/some-base-model")]


# Prevents: refusing a real chat model whose template sits in tokenizer_config.json (older tokenizers) rather than
# in chat_template.jinja, or refusing a folder that has no tokenizer at all (from_pretrained reports that better).
def test_template_in_tokenizer_config_or_no_tokenizer_is_not_refused(tmp_path):
    in_config = tmp_path / "older-chat-model"
    in_config.mkdir()
    (in_config / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert download_model(str(in_config), profile=get_profile("tiny")) == in_config

    no_tokenizer = tmp_path / "weights-only"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text("{}")
    assert download_model(str(no_tokenizer), profile=get_profile("tiny")) == no_tokenizer

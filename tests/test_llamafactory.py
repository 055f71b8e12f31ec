import json

import pytest
import yaml

from helpers import hub_data
from helpers.data import read_records, to_messages
from helpers.hub_data import course_conversations
from helpers.llamafactory import (
    dataset_entry,
    export,
    export_dataset,
    inference_yaml,
    main,
    merge_dir,
    merge_yaml,
    predict_yaml,
    run_dir,
    template_for,
    training_yaml,
)
from helpers.models import SEVEN_PROJECTIONS
from helpers.paths import CACHE_ENV
from helpers.profiles import get_profile

GPU, TINY = get_profile("gpu"), get_profile("tiny")
LESSONS = ("nekoqa", "tang", "huanhuan")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


def declared_columns(entry: dict) -> set[str]:
    return set(entry["columns"].values())


@pytest.mark.parametrize("formatting", ["alpaca", "sharegpt"])
def test_exported_rows_have_exactly_the_declared_columns_and_every_row(tmp_path, formatting):
    # Prevents: LLaMA-Factory silently dropping a column (the system prompt) or rows going missing.
    for lesson in LESSONS:
        name = export_dataset(lesson, tmp_path, formatting, TINY)
        info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
        for dataset, split in ((name, "train"), (f"{name}_eval", "eval")):
            entry = info[dataset]
            assert entry["formatting"] == formatting
            rows = read_records(tmp_path / entry["file_name"])
            assert all(set(row) == declared_columns(entry) for row in rows)
            assert len(rows) == len(course_conversations(lesson, split, profile=TINY))


@pytest.mark.parametrize("formatting", ["alpaca", "sharegpt"])
def test_exported_rows_read_back_as_the_course_conversations(tmp_path, formatting):
    # Prevents: LLaMA-Factory training on other prompts (a lost system prompt, a different user turn).
    for lesson in LESSONS:
        name = export_dataset(lesson, tmp_path, formatting, TINY)
        rows = read_records(tmp_path / f"{name}.json")
        assert [to_messages(row) for row in rows] == course_conversations(lesson, "train", profile=TINY)


def test_sharegpt_entry_uses_the_documented_openai_style_tags():
    entry = dataset_entry("x.json", "sharegpt")
    assert entry["columns"] == {"messages": "messages"}
    assert entry["tags"] == {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                             "assistant_tag": "assistant", "system_tag": "system"}


def test_system_prompt_goes_in_the_system_column(tmp_path):
    rows = read_records(tmp_path / f"{export_dataset('huanhuan', tmp_path, 'alpaca', TINY)}.json")
    assert {row["system"] for row in rows} == {"现在你要扮演皇帝身边的女人--甄嬛"}
    rows = read_records(tmp_path / f"{export_dataset('nekoqa', tmp_path, 'alpaca', TINY)}.json")
    assert {row["system"] for row in rows} == {""}  # NekoQA trains without one


def test_gpu_export_uses_the_full_training_set(tmp_path, monkeypatch):
    full = tmp_path / "full.json"
    full.write_text(json.dumps([{"instruction": f"问题 {i}", "output": "喵~"} for i in range(7)]), encoding="utf-8")
    monkeypatch.setattr(hub_data, "download_full_dataset", lambda lesson: full)
    name = export_dataset("nekoqa", tmp_path / "out", "alpaca", GPU)
    assert len(read_records(tmp_path / "out" / f"{name}.json")) == 7


def test_dataset_info_merge_keeps_other_entries(tmp_path):
    # Prevents: wiping LLaMA-Factory's own data sets (alpaca_en_demo, identity, ...) from dataset_info.json.
    info_path = tmp_path / "dataset_info.json"
    info_path.write_text(json.dumps({"identity": {"file_name": "identity.json"},
                                     "course_tang": {"file_name": "old.json"}}), encoding="utf-8")
    export_dataset("tang", tmp_path, "sharegpt", TINY)
    export_dataset("nekoqa", tmp_path, "alpaca", TINY)
    info = json.loads(info_path.read_text(encoding="utf-8"))
    assert info["identity"] == {"file_name": "identity.json"}
    assert info["course_tang"]["file_name"] == "course_tang.json" and info["course_tang"]["formatting"] == "sharegpt"
    assert {"course_tang_eval", "course_nekoqa", "course_nekoqa_eval"} <= set(info)


def test_broken_dataset_info_is_reported_and_left_alone(tmp_path):
    info_path = tmp_path / "dataset_info.json"
    info_path.write_text('{"identity": ', encoding="utf-8")
    with pytest.raises(ValueError, match="dataset_info.json"):
        export_dataset("tang", tmp_path, "alpaca", TINY)
    assert info_path.read_text(encoding="utf-8") == '{"identity": '


@pytest.mark.parametrize("lesson", LESSONS)
def test_training_yaml_carries_the_recipe(lesson):
    # Prevents: the LLaMA-Factory run quietly training another recipe than the lesson's.
    recipe = GPU.recipe(lesson)
    config = yaml.safe_load(training_yaml(lesson, GPU, "Qwen/Qwen2.5-1.5B-Instruct", f"course_{lesson}", "/data"))
    assert config["stage"] == "sft" and config["do_train"] is True and config["finetuning_type"] == "lora"
    assert config["lora_target"].split(",") == list(SEVEN_PROJECTIONS)
    assert (config["lora_rank"], config["lora_alpha"], config["lora_dropout"]) == (
        recipe.lora_r, recipe.lora_alpha, recipe.lora_dropout)
    assert (config["quantization_bit"], config["quantization_type"], config["double_quantization"]) == (4, "nf4", True)
    assert (config["learning_rate"], config["lr_scheduler_type"], config["warmup_steps"], config["max_steps"]) == (
        recipe.learning_rate, "linear", recipe.warmup_steps, recipe.max_steps)
    assert (config["per_device_train_batch_size"], config["gradient_accumulation_steps"]) == (
        recipe.batch_size, recipe.grad_accum)
    assert (config["cutoff_len"], config["save_steps"], config["seed"]) == (recipe.cutoff, recipe.save_steps, 42)
    assert config.get("max_samples") == recipe.train_rows
    assert config["bf16"] is True and config["disable_gradient_checkpointing"] is False
    assert (config["dataset"], config["dataset_dir"], config["template"]) == (f"course_{lesson}", "/data", "qwen")
    assert config["output_dir"] == str(run_dir(lesson, GPU))


def test_predict_yaml_writes_predictions_for_the_held_out_set():
    config = yaml.safe_load(predict_yaml("huanhuan", GPU, "Qwen/Qwen2.5-1.5B-Instruct", "course_huanhuan"))
    assert config["do_predict"] is True and config["predict_with_generate"] is True
    assert config["eval_dataset"] == "course_huanhuan_eval"
    assert config["max_samples"] == GPU.recipe("huanhuan").eval_rows
    assert config["adapter_name_or_path"] == str(run_dir("huanhuan", GPU))
    assert config["do_sample"] is False and config["max_new_tokens"] == GPU.max_new_tokens


def test_templates_follow_the_model_name():
    assert template_for("Qwen/Qwen2.5-1.5B-Instruct") == "qwen"
    assert template_for("/root/autodl-tmp/llm-course/models/Qwen--Qwen2.5-7B-Instruct") == "qwen"
    assert template_for("LLM-Research/Llama-3.2-3B-Instruct") == "llama3"
    assert template_for("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2"
    with pytest.raises(ValueError, match="--template"):
        template_for("Qwen/Qwen3-8B")


def test_cli_writes_data_info_and_both_configs(tmp_path, capsys):
    out = tmp_path / "LLaMA-Factory" / "data"
    assert main(["export", "huanhuan", "--out", str(out), "--formatting", "sharegpt", "--profile", "tiny"]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"course_huanhuan.json", "course_huanhuan_eval.json", "dataset_info.json",
                     "course_huanhuan_sft.yaml", "course_huanhuan_predict.yaml", "course_huanhuan_infer.yaml",
                     "course_huanhuan_merge.yaml"}
    config = yaml.safe_load((out / "course_huanhuan_sft.yaml").read_text(encoding="utf-8"))
    assert config["dataset_dir"] == str(out) and config["template"] == "smollm2"
    printed = capsys.readouterr().out
    assert "llamafactory-cli train" in printed and "llamafactory-cli chat" in printed
    assert "llamafactory-cli export" in printed
    assert main(["export", "tang", "--out", str(out), "--model", "Qwen/Qwen3-8B", "--profile", "tiny"]) == 1


def test_export_returns_every_path(tmp_path):
    written = export("tang", tmp_path, "alpaca", TINY, "Qwen/Qwen2.5-0.5B-Instruct")
    assert all(path.is_file() for path in written.values()) and set(written) == {
        "data", "eval", "dataset_info", "sft", "predict", "infer", "merge"}


MODEL = "Qwen/Qwen2.5-1.5B-Instruct"


@pytest.mark.parametrize("lesson", LESSONS)
def test_inference_yaml_loads_the_4bit_base_with_the_trained_adapter(lesson):
    # Prevents: llamafactory-cli chat / webchat / api serving the base alone, another adapter or another template.
    config = yaml.safe_load(inference_yaml(lesson, GPU, MODEL))
    assert (config["model_name_or_path"], config["template"], config["finetuning_type"]) == (MODEL, "qwen", "lora")
    assert (config["quantization_bit"], config["quantization_type"], config["double_quantization"]) == (4, "nf4", True)
    assert config["infer_backend"] == "huggingface"
    assert config["adapter_name_or_path"] == str(run_dir(lesson, GPU))


def test_inference_yaml_header_shows_the_three_commands():
    # Prevents: a config students cannot tell how to run.
    text = inference_yaml("nekoqa", GPU, MODEL)
    for command in ("llamafactory-cli chat", "llamafactory-cli webchat", "API_PORT=8000 llamafactory-cli api"):
        assert any(line.startswith("#") and command in line for line in text.splitlines())


@pytest.mark.parametrize("lesson", LESSONS)
def test_merge_yaml_merges_into_the_16bit_base(lesson):
    # Prevents: "Cannot merge adapters to a quantized model", or merging into 4-bit (lesson 06: the update is lost).
    config = yaml.safe_load(merge_yaml(lesson, GPU, MODEL))
    assert not [key for key in config if key.startswith("quantization")]
    assert (config["model_name_or_path"], config["template"], config["finetuning_type"]) == (MODEL, "qwen", "lora")
    assert config["adapter_name_or_path"] == str(run_dir(lesson, GPU))
    assert (config["export_dir"], config["export_size"], config["export_device"], config["export_legacy_format"]) == (
        str(merge_dir(lesson, GPU)), 2, "cpu", False)
    assert config["export_dir"] != config["adapter_name_or_path"]


def test_merge_yaml_header_explains_why_it_is_not_quantized():
    # Prevents: someone "fixing" the merge config by adding quantization_bit back.
    header = [line for line in merge_yaml("nekoqa", GPU, MODEL).splitlines() if line.startswith("#")]
    assert any("quantization_bit" in line for line in header)
    assert any("第 06 课" in line and "lesson 06" in line for line in header)


def test_chat_and_merge_use_the_adapter_that_training_writes(tmp_path):
    # Prevents: training saving the adapter in one folder and chat / merge looking for it in another.
    written = export("nekoqa", tmp_path, "alpaca", TINY)
    configs = {kind: yaml.safe_load(written[kind].read_text(encoding="utf-8"))
               for kind in ("sft", "predict", "infer", "merge")}
    adapter = configs["sft"]["output_dir"]
    assert {configs[kind]["adapter_name_or_path"] for kind in ("predict", "infer", "merge")} == {adapter}
    assert {config["template"] for config in configs.values()} == {"smollm2"}
    assert {config["model_name_or_path"] for config in configs.values()} == {TINY.model_id}


def test_explicit_template_reaches_every_config(tmp_path):
    # Prevents: --template for a model the course cannot name (Qwen3) being ignored by chat or merge.
    written = export("tang", tmp_path, "alpaca", TINY, "Qwen/Qwen3-8B", "qwen3")
    for kind in ("sft", "predict", "infer", "merge"):
        assert yaml.safe_load(written[kind].read_text(encoding="utf-8"))["template"] == "qwen3"

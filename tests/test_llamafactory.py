import json
import shutil

import pytest
import yaml

from helpers import hub_data, lessons, llamafactory
from helpers.data import read_records, to_messages
from helpers.download import local_folder_name
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
from helpers.paths import CACHE_ENV, mark_complete, models_dir
from helpers.profiles import get_profile
from helpers.registry import SFT_LESSONS
from helpers.templates import IGNORE_INDEX, default_system_prompt, encode_with_label_mask, reply_label
from helpers.tiny_model import ensure_tiny_model

GPU, TINY = get_profile("gpu"), get_profile("tiny")
KINDS = ("sft", "predict", "infer", "merge")
SMOL_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # its chat template's
# Transcribed from LLaMA-Factory 0.9.5, src/llamafactory/data/template.py (register_template name="smollm2"):
# the template's own default system prompt, one "." longer than the model's. Without default_system in the YAMLs,
# rows without a system prompt (NekoQA) would train on this one.
LLAMAFACTORY_SMOLLM2_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face."


@pytest.fixture(scope="session")
def tiny_model_dir():
    """The converted SmolLM2 folder in the real course cache (found before a test isolates the cache)."""
    return ensure_tiny_model()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(llamafactory, "ensure_tiny_model", lambda: tiny_model_dir)  # not converted again per test


def declared_columns(entry: dict) -> set[str]:
    return set(entry["columns"].values())


@pytest.mark.parametrize("formatting", ["alpaca", "sharegpt"])
def test_exported_rows_have_exactly_the_declared_columns_and_every_row(tmp_path, formatting):
    # Prevents: LLaMA-Factory silently dropping a column (the system prompt) or rows going missing.
    for lesson in SFT_LESSONS:
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
    for lesson in SFT_LESSONS:
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


@pytest.mark.parametrize("lesson", SFT_LESSONS)
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


@pytest.mark.parametrize("lesson", SFT_LESSONS)
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


@pytest.mark.parametrize("lesson", SFT_LESSONS)
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


def test_explicit_template_reaches_every_config(tmp_path):
    # Prevents: --template for a model the course cannot name (Qwen3) being ignored by chat or merge.
    written = export("tang", tmp_path, "alpaca", TINY, "Qwen/Qwen3-8B", "qwen3")
    for kind in ("sft", "predict", "infer", "merge"):
        assert yaml.safe_load(written[kind].read_text(encoding="utf-8"))["template"] == "qwen3"


def test_tiny_configs_load_the_local_model_folder_offline(tmp_path, tiny_model_dir):
    # Prevents: the tiny profile's configs naming the hub id, which LLaMA-Factory cannot load offline.
    written = export("nekoqa", tmp_path, "alpaca", TINY)
    for kind in KINDS:
        assert yaml.safe_load(written[kind].read_text(encoding="utf-8"))["model_name_or_path"] == str(tiny_model_dir)


def test_configs_carry_the_models_own_default_system_prompt(tmp_path, tiny_tokenizer):
    # Prevents: LLaMA-Factory's smollm2 template adding its own default system prompt (one token longer) to rows
    # without one, so that it trains other tokens than the course (issue 15, item 4).
    assert default_system_prompt(tiny_tokenizer) == SMOL_DEFAULT_SYSTEM != LLAMAFACTORY_SMOLLM2_DEFAULT
    written = export("nekoqa", tmp_path, "alpaca", TINY)
    for kind in KINDS:
        text = written[kind].read_text(encoding="utf-8")
        assert yaml.safe_load(text)["default_system"] == SMOL_DEFAULT_SYSTEM
        assert any(line.startswith("# default_system") for line in text.splitlines())


def test_default_system_prompt_is_empty_when_the_template_adds_none(tiny_tokenizer):
    tokenizer = type(tiny_tokenizer).from_pretrained(tiny_tokenizer.name_or_path)
    tokenizer.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] "
                               "+ '<|im_end|>\\n' }}{% endfor %}")
    assert default_system_prompt(tokenizer) == ""


@pytest.fixture
def no_gpu_data(monkeypatch):
    """The gpu profile's export without its data files: they would be downloaded (offline: a warning)."""
    monkeypatch.setattr(llamafactory, "export_dataset", lambda lesson, *args: f"course_{lesson}")


def test_a_model_not_on_this_machine_keeps_its_hub_id_and_says_why_there_is_no_default_system(tmp_path, no_gpu_data):
    written = export("tang", tmp_path, "alpaca", GPU)
    for kind in KINDS:
        text = written[kind].read_text(encoding="utf-8")
        config = yaml.safe_load(text)
        assert config["model_name_or_path"] == GPU.model_id and "default_system" not in config
        assert any(line.startswith("# 未写 default_system") and "export again" in line for line in text.splitlines())


def test_a_downloaded_model_is_loaded_from_the_course_cache(tmp_path, tiny_model_dir, no_gpu_data):
    # Prevents: LLaMA-Factory downloading the gpu profile's model again when lesson 01 already did.
    folder = models_dir() / local_folder_name(GPU.model_id)
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))  # the tokenizer is enough
    mark_complete(folder)
    config = yaml.safe_load(export("tang", tmp_path, "alpaca", GPU)["sft"].read_text(encoding="utf-8"))
    assert (config["model_name_or_path"], config["default_system"]) == (str(folder), SMOL_DEFAULT_SYSTEM)
    assert config["template"] == "qwen"  # named from the model id, not the folder


def test_reply_label_is_what_llamafactory_decodes_from_the_label_tokens(tiny_tokenizer):
    # LLaMA-Factory's generated_predictions.jsonl: label = tokenizer.decode(label ids, skip_special_tokens=True),
    # so the newline after <|im_end|> stays; the course's predictions use the same convention.
    for conversation in course_conversations("huanhuan", "eval", 3, TINY):
        labels = encode_with_label_mask(tiny_tokenizer, conversation)["labels"]
        expected = tiny_tokenizer.decode([t for t in labels if t != IGNORE_INDEX], skip_special_tokens=True)
        assert reply_label(tiny_tokenizer, conversation) == expected == conversation[-1]["content"] + "\n"


def test_course_predictions_label_like_llamafactory(tiny_tokenizer, monkeypatch):
    # Prevents: the course's predictions and LLaMA-Factory's scoring differently for the same replies.
    model = type("Model", (), {"generation_config": type("Config", (), {"eos_token_id": 2})()})()
    monkeypatch.setattr(lessons, "generate_ids", lambda model, tokenizer, prompts, limit, names: [[2] for _ in prompts])
    conversations = course_conversations("nekoqa", "eval", 2, TINY)
    records = lessons.predict(model, tiny_tokenizer, conversations, 4)
    assert [r["label"] for r in records] == [c[-1]["content"] + "\n" for c in conversations]

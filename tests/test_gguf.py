"""GGUF export (lesson 06): llama.cpp's converter writes a file that transformers reads back with the merged model's
logits and chat template; the Ollama Modelfile renders the training prompt; each failure explains itself.

The merged model is the tiny model (cut to a few blocks: ``shallow_model``) with a LoRA adapter of random, non-zero
weights merged by the course's own ``merge_adapter`` (training the NekoQA adapter takes minutes; lesson 06 exports
that one, on the whole tiny model, under nbval): its logits differ from the base model's, so a test that passes
proves the merged weights, not the base's, reached the file.
The converter is the one ``make setup`` fetched (``python -m helpers.gguf fetch``); nothing here downloads.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

from helpers import gguf
from helpers.gguf import GGUFError, export_gguf
from helpers.gguf_verify import (
    F16_MAX_ABS,
    f16_logits_ok,
    gguf_logit_diff,
    load_gguf_model,
    load_gguf_tokenizer,
    template_ids,
    template_mismatches,
)
from helpers.ollama import OllamaTemplateError, ollama_messages, render_go_template, write_modelfile

HELD_OUT = 4  # NekoQA held-out conversations compared


@pytest.fixture(scope="module")
def merged(tmp_path_factory, shallow_model):
    """A merged folder: the shallow model plus a random LoRA update on the attention projections, merged in fp32."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.merge import merge_adapter

    base_dir, work = shallow_model, tmp_path_factory.mktemp("gguf")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(work / "adapter")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(work / "adapter")
    merge_adapter(base_dir, work / "adapter", work / "merged", torch.float32, "200MB")
    return work / "merged"


@pytest.fixture(scope="module")
def heldout(merged):
    """The merged tokenizer, NekoQA held-out conversations and a padded batch of them."""
    from transformers import AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from helpers.lessons import encoded_split, lesson_split
    from helpers.profiles import get_profile

    tokenizer, tiny = AutoTokenizer.from_pretrained(merged), get_profile("tiny")
    rows = encoded_split("nekoqa", "eval", tokenizer, tiny)[:HELD_OUT]
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(rows)
    return tokenizer, lesson_split("nekoqa", "eval", tiny)[:HELD_OUT], batch


# Prevents: a GGUF that answers unlike the fine-tuned model (wrong tensors, the base's weights, a lossy type), or
# whose embedded chat template builds another prompt than training did (the model rambles in llama.cpp / Ollama).
@pytest.mark.slow
def test_f16_export_has_the_merged_logits_and_the_training_template(merged, heldout, shallow_model, tmp_path):
    from transformers import AutoModelForCausalLM

    tokenizer, conversations, batch = heldout
    path = export_gguf(merged, "f16", tmp_path / "model-f16.gguf")
    assert path.is_file() and not list(tmp_path.glob("*.part"))
    assert 0.95 < path.stat().st_size / (2 * gguf.weight_count(merged)) < 1.05  # 2 bytes a weight

    gguf_model, gguf_tokenizer = load_gguf_model(path), load_gguf_tokenizer(path)
    merged_model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    diff = gguf_logit_diff(merged_model, gguf_model, batch)
    assert f16_logits_ok(diff), diff
    base_diff = gguf_logit_diff(AutoModelForCausalLM.from_pretrained(shallow_model, dtype=torch.float32),
                                gguf_model, batch)
    assert base_diff["max_abs"] > 10 * F16_MAX_ABS, base_diff  # the file holds the merged weights, not the base's

    assert gguf_tokenizer.chat_template == tokenizer.chat_template
    assert template_mismatches(gguf_tokenizer, tokenizer, conversations) == []
    assert gguf.is_fresh(path, merged)
    assert export_gguf(merged, "f16", path) == path  # reused, not converted again


# Prevents: a q8_0 file that is not about half the f16 size. (Reading it back, slow on CPU, is lesson 06's job under
# nbval: it loads the q8_0 file and prints its greedy agreement with the merged model.)
@pytest.mark.slow
def test_q8_0_export_is_about_half_the_f16_size(merged, tmp_path):
    path = export_gguf(merged, "q8_0", tmp_path / "model-q8_0.gguf")
    assert 0.5 < path.stat().st_size / (gguf.BYTES_PER_WEIGHT["q8_0"] * gguf.weight_count(merged)) < 1.05
    assert not list(tmp_path.glob("*.part"))


# Prevents: a Modelfile whose TEMPLATE / SYSTEM build another prompt than training (Ollama's reply rambles).
def test_modelfile_renders_the_training_prompt(merged, heldout, tmp_path):
    tokenizer, conversations, _ = heldout
    modelfile = write_modelfile(tmp_path / "m.gguf", tokenizer).read_text(encoding="utf-8")
    template = re.search(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""$', modelfile, re.S | re.M).group(1)
    assert modelfile.startswith("FROM ./m.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # the template's default
    hello = [{"role": "user", "content": "你好"}]  # written out by hand, as Ollama's Go template renders it
    assert render_go_template(template, ollama_messages(system, hello)) == (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")
    for conversation in conversations:
        prompt = conversation[:-1]
        text = render_go_template(template, ollama_messages(system, prompt))
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == template_ids(tokenizer, prompt, True)


# Prevents: a Modelfile written for a template the course has not checked (Llama-3 headers rendered as ChatML).
def test_modelfile_refuses_a_template_it_cannot_match(tiny_tokenizer, tmp_path):
    llama3 = ("{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>"
              "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
    with pytest.raises(OllamaTemplateError, match="ChatML"):
        write_modelfile(tmp_path / "m.gguf", _with_template(tiny_tokenizer, llama3))
    chatml_without_newline = tiny_tokenizer.chat_template.replace("'\n' + message['content']", "message['content']")
    with pytest.raises(OllamaTemplateError, match="训练 / training"):
        write_modelfile(tmp_path / "m.gguf", _with_template(tiny_tokenizer, chatml_without_newline))
    assert not (tmp_path / "Modelfile").exists()


def _with_template(tokenizer, template: str):
    copy = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    copy.chat_template = template
    return copy


# Prevents: exporting an adapter folder or a typo'd path, which the converter reports as a bare traceback.
def test_missing_merged_folder_says_to_merge_first(tmp_path):
    with pytest.raises(GGUFError, match="先运行第 06 课的合并") as error:
        export_gguf(tmp_path / "nekoqa-tiny", "f16")
    assert "merge first" in str(error.value)


# Prevents: a model llama.cpp cannot convert failing with the converter's log alone, without saying what to do.
@pytest.mark.slow
def test_unsupported_architecture_is_named(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["CourseToyForCausalLM"]}))
    save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    with pytest.raises(GGUFError, match="不支持 CourseToyForCausalLM") as error:
        export_gguf(folder, "f16", tmp_path / "odd.gguf")
    assert "does not support CourseToyForCausalLM" in str(error.value)
    assert not list(tmp_path.glob("odd.gguf*"))


# Prevents: a full disk discovered after minutes of converting, or a half-written .gguf left under the final name.
def test_no_disk_space_stops_before_converting(merged, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf.shutil, "disk_usage", lambda path: type("U", (), {"free": 10 * 2**20})())
    monkeypatch.setattr(gguf, "run_converter", lambda *a: pytest.fail("the converter should not start"))
    with pytest.raises(GGUFError, match="磁盘空间不够") as error:
        export_gguf(merged, "f16", tmp_path / "full.gguf")
    assert "Not enough disk space" in str(error.value) and not list(tmp_path.iterdir())


# Prevents: an interrupted or failing conversion leaving a truncated file that llama.cpp / Ollama would load.
def test_failed_conversion_leaves_no_file(merged, tmp_path, monkeypatch):
    def half_written(command, part, log, expected, desc):
        part.write_bytes(b"GGUF" + bytes(1000))
        log.write_text("OSError: [Errno 28] No space left on device\n")
        return 1

    monkeypatch.setattr(gguf, "run_converter", half_written)
    with pytest.raises(GGUFError, match="磁盘空间不够"):
        export_gguf(merged, "q8_0", tmp_path / "cut.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.log"]


# Prevents: no network at the first export ending in pip's output alone, without saying how to get the converter.
def test_converter_download_failure_says_what_to_do(isolated_cache, monkeypatch):
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: Could not find a version that satisfies the requirement")
    monkeypatch.setattr(gguf.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(GGUFError, match="下载 GGUF 转换器失败") as error:
        gguf.fetch_converter()
    assert "python -m helpers.gguf fetch" in str(error.value) and "Could not find a version" in str(error.value)
    assert not gguf.converter_dir().exists()

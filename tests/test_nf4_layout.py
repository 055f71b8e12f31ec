"""Evaluating the 4-bit base before training (as lessons 03-05 do) must not change how it trains.

bitsandbytes 0.50 repacks NF4 weights into a CPU inference layout on the first eval-mode forward without gradients
(on CPUs with AVX512-BF16) and keeps that layout for the training steps that follow, whose gradients then come out
wrong. ``load_model_4bit`` turns that repacking off.
"""

from __future__ import annotations

import math
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from peft import get_peft_model
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from helpers.encoding import encode_conversations
from helpers.hub_data import course_conversations
from helpers.profiles import get_profile
from helpers.train import heldout_loss, load_model_4bit, lora_config


def lora_gradient_norm(model_dir: Path, tokenizer, evaluate_first: bool) -> tuple[float, bool]:
    """The LoRA weights' gradient norm on one batch, and whether any NF4 weight was repacked for inference."""
    profile = get_profile("tiny")
    recipe = profile.recipe("nekoqa")
    rows = encode_conversations(tokenizer, course_conversations("nekoqa", "train", 4), 64)
    model = load_model_4bit(model_dir, profile)
    if evaluate_first:
        heldout_loss(model, rows)  # the base model's held-out loss, measured before training in lessons 03-05
    repacked = any(getattr(module.weight.quant_state, "packing_format_for_cpu", False)
                   for module in model.modules() if isinstance(module, bnb.nn.Linear4bit))
    torch.manual_seed(0)  # the same LoRA initialisation in both runs
    peft_model = get_peft_model(model, lora_config(recipe))
    peft_model.train()
    batch = DataCollatorForLanguageModeling(pad_token_id=0)(rows)
    peft_model(**batch).loss.backward()
    grads = [param.grad.norm() ** 2 for param in peft_model.parameters() if param.grad is not None]
    return math.sqrt(sum(grads)), repacked


# Prevents: lessons 03-05 training on wrong gradients after they measured the base model's held-out loss.
@pytest.mark.slow
def test_evaluating_first_does_not_change_the_gradients(shallow_model, tiny_tokenizer):
    fresh, _ = lora_gradient_norm(shallow_model, tiny_tokenizer, evaluate_first=False)
    after_eval, repacked = lora_gradient_norm(shallow_model, tiny_tokenizer, evaluate_first=True)
    assert not repacked
    assert math.isclose(after_eval, fresh, rel_tol=1e-4), (after_eval, fresh)

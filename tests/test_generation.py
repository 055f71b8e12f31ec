"""Base and tuned replies from one batch (peft's mixed-adapter batch) are the replies of two separate passes."""

from __future__ import annotations

import pytest
import torch

from helpers.generation import BASE_ADAPTER, base_then_tuned, generate_replies, print_replies
from helpers.lessons import lesson_split, predict, predict_base_and_tuned
from helpers.profiles import get_profile

TOKENS = 8


@pytest.fixture(scope="module")
def tuned(shallow_model):
    """The shallow model with a random, non-zero LoRA adapter: its replies differ from the base's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(shallow_model, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    return get_peft_model(base, lora), AutoTokenizer.from_pretrained(shallow_model)


# Prevents: a mixed batch that gives some rows the wrong adapter (the base's replies shown as the tuned model's, or
# the other way round), or whose padding changes a reply.
def test_one_batch_replies_equal_two_passes(tuned, capsys, one_thread):
    model, tokenizer = tuned
    conversations = lesson_split("nekoqa", "eval", get_profile("tiny"))[:3]
    assert base_then_tuned(model, 2) == [BASE_ADAPTER, BASE_ADAPTER, "default", "default"]
    base, tuned_records = predict_base_and_tuned(model, tokenizer, conversations, TOKENS)
    with model.disable_adapter():
        assert base == predict(model, tokenizer, conversations, TOKENS)
    assert tuned_records == predict(model, tokenizer, conversations, TOKENS)
    assert [r["predict"] for r in base] != [r["predict"] for r in tuned_records]  # the adapter changes the replies

    prompts = [conversation[:-1] for conversation in conversations]
    print_replies(model, tokenizer, prompts, TOKENS)
    shown = capsys.readouterr().out
    with model.disable_adapter():
        for reply in generate_replies(model, tokenizer, prompts, TOKENS):
            assert f"  基座: {reply.strip()}\n" in shown
    for reply in generate_replies(model, tokenizer, prompts, TOKENS):
        assert f"  微调: {reply.strip()}\n" in shown

"""Check a GGUF export against the merged model it came from: logits, greedy replies and the chat template.

transformers reads GGUF itself (``gguf_file=``, through the ``gguf`` package): it dequantises every tensor to float,
so the model it returns computes with exactly the weights stored in the file, rounding included.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.generation import generate_ids
from helpers.gguf_read import each_gguf_parsed_once
from helpers.hardware import device
from helpers.merge import compare_logits, logits_on
from helpers.templates import Message

# f16 keeps 11 significant bits per weight: on the tiny model (fp32 merge, fp32 compute) the logits of 4 held-out
# rows differed by at most ~0.03 (mean ~0.003); these bounds leave room for larger models, and still catch a wrong
# tensor layout or a missing layer, which moves logits by whole units and changes most top-1 predictions.
F16_MAX_ABS = 0.25
F16_MEAN_ABS = 0.02
F16_TOP1 = 0.98


def load_gguf_model(path: Path, dtype: torch.dtype = torch.float32) -> AutoModelForCausalLM:
    """A GGUF file loaded by transformers (dequantised to ``dtype``), on the GPU if there is one."""
    path = Path(path)
    with each_gguf_parsed_once():  # config and weights from one parse
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                    device_map={"": device()})


def load_gguf_tokenizer(path: Path):
    """The tokenizer (vocabulary and chat template) stored in a GGUF file; reading it takes ~8 s on the tiny model."""
    path = Path(path)
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def template_ids(tokenizer, messages: list[Message], add_generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's chat template."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, return_dict=True)
    return list(encoded["input_ids"])


def template_mismatches(gguf_tokenizer, tokenizer, conversations: list[list[Message]]) -> list[int]:
    """Indices of conversations whose prompt or full rendering gives other token ids through the GGUF's template."""
    bad = []
    for index, conversation in enumerate(conversations):
        for messages, open_turn in ((conversation[:-1], True), (conversation, False)):
            if template_ids(gguf_tokenizer, messages, open_turn) != template_ids(tokenizer, messages, open_turn):
                bad.append(index)
                break
    return bad


def f16_logits_ok(diff: dict[str, float]) -> bool:
    """Whether a ``compare_logits`` result is within the stated f16 tolerance."""
    return diff["max_abs"] <= F16_MAX_ABS and diff["mean_abs"] <= F16_MEAN_ABS and diff["top1_agree"] >= F16_TOP1


def gguf_logit_diff(merged_model, gguf_model, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """``compare_logits`` of the merged model and the GGUF model on a padded batch, real positions only."""
    return compare_logits(logits_on(merged_model, batch), logits_on(gguf_model, batch), batch["attention_mask"])


def reply_agreement(model_a, model_b, tokenizer, prompts: list[list[Message]], max_new_tokens: int) -> dict:
    """Greedy replies of two models to the same prompts: how many are identical, and each pair of texts."""
    ids_a = generate_ids(model_a, tokenizer, prompts, max_new_tokens)
    ids_b = generate_ids(model_b, tokenizer, prompts, max_new_tokens)
    pad = tokenizer.pad_token_id
    pairs = [([t for t in a if t != pad], [t for t in b if t != pad]) for a, b in zip(ids_a, ids_b, strict=True)]
    return {
        "same": sum(a == b for a, b in pairs),
        "total": len(pairs),
        "replies": [(tokenizer.decode(a, skip_special_tokens=True).strip(),
                     tokenizer.decode(b, skip_special_tokens=True).strip()) for a, b in pairs],
    }

"""Greedy generation from a chat model: the decoding settings lessons 03-08 and the server share, and batch replies.

Only torch here: the chat app and the OpenAI-compatible server import ``GREEDY`` without the training libraries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from peft import PeftModel

# Greedy decoding that keeps a small model out of loops ("我爱你，我爱你，……"): no run of 6 tokens may appear twice
# (no_repeat_ngram_size: about 2-3 Chinese characters with SmolLM2's tokenizer, up to 6 with Qwen's); the Tang
# homework's generation settings also block repeated n-grams. Not repetition_penalty: it also punishes the end-of-turn
# token the prompt already holds, so replies stop less (tried once while writing the course, tiny NekoQA with that
# day's adapter: the stop rate lesson 07 computes fell from 0.33 to 0 at 1.2; no notebook repeats it).
GREEDY = {"do_sample": False, "no_repeat_ngram_size": 6}
# peft's name for "no adapter" in a batch whose rows use different adapters (``generate(adapter_names=...)``).
BASE_ADAPTER = "__base__"


@torch.no_grad()
def generate_ids(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
                 adapter_names: list[str] | None = None) -> list[list[int]]:
    """New-token ids (``GREEDY`` decoding) for a batch of conversations, left-padded so every prompt ends together.

    ``adapter_names`` (a peft model): the adapter each conversation's row uses, ``BASE_ADAPTER`` for none.
    """
    model.eval()
    prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=False).to(model.device)
    per_row = {"adapter_names": adapter_names} if adapter_names else {}
    output = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **GREEDY,
                            **per_row)
    return output[:, batch["input_ids"].shape[1]:].tolist()


def generate_replies(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
                     adapter_names: list[str] | None = None) -> list[str]:
    """Replies (``GREEDY`` decoding) for a batch of conversations (``adapter_names``: see ``generate_ids``)."""
    return tokenizer.batch_decode(generate_ids(model, tokenizer, conversations, max_new_tokens, adapter_names),
                                  skip_special_tokens=True)


def base_then_tuned(model: PeftModel, rows: int) -> list[str]:
    """Adapter names for a batch holding ``rows`` conversations twice: the base's rows (adapter off), then the tuned.

    One batch instead of two passes (peft's mixed-adapter batch): a 4-bit decoding step on CPU costs about as much for
    twice the rows, since it dequantizes every weight once per step (tiny NekoQA, 3 prompts, 32 tokens: 33 s -> 20 s,
    the same replies); on a GPU it also saves the second pass (an estimate: not measured there).
    """
    return [BASE_ADAPTER] * rows + [model.active_adapter] * rows


def print_replies(model: PeftModel, tokenizer, prompts: list[list[dict]], max_new_tokens: int) -> None:
    """The base's (adapter off) and the tuned model's greedy reply to each prompt, side by side, from one batch."""
    replies = generate_replies(model, tokenizer, prompts * 2, max_new_tokens, base_then_tuned(model, len(prompts)))
    base, tuned = replies[: len(prompts)], replies[len(prompts):]
    for prompt, before, after in zip(prompts, base, tuned, strict=True):
        print("问:", prompt[-1]["content"])
        print("  基座:", before.strip())
        print("  微调:", after.strip())

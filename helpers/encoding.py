"""Conversations -> training rows: token ids with the label mask (``helpers.templates``), cut to the cutoff as
LLaMA-Factory does (lesson 03's ``# @save encode`` cell), with the conversation named on an error."""

from __future__ import annotations

from helpers.lesson03_cells import truncate  # lesson 03's "# @save encode" cell
from helpers.messages import warn
from helpers.templates import Message, TemplateError, encode_with_label_mask


def encode_and_count(tokenizer, conversations: list[list[Message]],
                     cutoff: int) -> tuple[list[dict[str, list[int]]], int]:
    """Every conversation encoded with the label mask and cut to ``cutoff``, and how many were longer than it."""
    encoded, truncated = [], 0
    for number, messages in enumerate(conversations, start=1):
        try:
            sample = encode_with_label_mask(tokenizer, messages)
        except TemplateError as error:  # name the conversation: the template's message names only the turn
            zh, _, en = str(error).partition("\n")
            raise TemplateError(f"第 {number} 条对话：{zh}\nconversation {number}: {en}") from None
        if len(sample["input_ids"]) > cutoff:
            truncated += 1
        ids, labels = truncate(sample["input_ids"], sample["labels"], cutoff)
        encoded.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    if truncated:
        warn(f"{truncated} 条样本超过 {cutoff} 个 token，已截断；若被截掉的内容重要，请调大 cutoff。\n"
             f"{truncated} samples truncated to {cutoff} tokens; raise the cutoff if the cut part matters.")
    return encoded, truncated


def encode_conversations(tokenizer, conversations: list[list[Message]], cutoff: int) -> list[dict[str, list[int]]]:
    """Encode every conversation with the label mask, truncating to ``cutoff`` (with a warning count)."""
    return encode_and_count(tokenizer, conversations, cutoff)[0]

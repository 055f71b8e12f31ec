"""Chat templates written out by hand, and the label mask that decides what a model learns.

Three families cover most open models:
- ``llama2``: ``<s>[INST] <<SYS>> ... <</SYS>> ... [/INST] answer </s>`` (Llama-2, many older Chinese models)
- ``llama3``: ``<|start_header_id|>role<|end_header_id|>`` headers ending in ``<|eot_id|>``
- ``chatml``: ``<|im_start|>role ... <|im_end|>`` (Qwen, SmolLM2, Yi, ...)

For training, always encode with the tokenizer's own ``apply_chat_template``: the
hand-written versions are here to be read and compared, so that a mismatch between
training and inference is something students can see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from helpers.lesson03_cells import IGNORE_INDEX, assistant_labels, chat_ids  # lesson 03's "# @save encode" cell

Message = dict[str, str]


class TemplateError(ValueError):
    """A conversation or template the course cannot encode."""


def _split_system(messages: list[Message]) -> tuple[str | None, list[Message]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def render_llama2(messages: list[Message], add_generation_prompt: bool = False) -> str:
    """Llama-2 chat: the system prompt lives inside the first ``[INST]`` block."""
    system, turns = _split_system(messages)
    text = ""
    for i, message in enumerate(turns):
        content = message["content"]
        if message["role"] == "user":
            if i == 0 and system is not None:
                content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
            text += f"<s>[INST] {content.strip()} [/INST]"
        else:
            text += f" {content.strip()} </s>"
    return text  # the generation prompt is the open "[/INST]" itself


def render_llama3(messages: list[Message], add_generation_prompt: bool = False) -> str:
    """Llama-3 chat: every turn has a header and ends with ``<|eot_id|>``."""
    text = "<|begin_of_text|>"
    for message in messages:
        text += f"<|start_header_id|>{message['role']}<|end_header_id|>\n\n{message['content'].strip()}<|eot_id|>"
    if add_generation_prompt:
        text += "<|start_header_id|>assistant<|end_header_id|>\n\n"
    return text


def render_chatml(
    messages: list[Message], add_generation_prompt: bool = False, default_system: str | None = None
) -> str:
    """ChatML; ``default_system`` is what the model's template inserts when no system turn is given."""
    if default_system is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": default_system}, *messages]
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    if add_generation_prompt:
        text += "<|im_start|>assistant\n"
    return text


@dataclass(frozen=True)
class ChatTemplate:
    """A hand-written template and the token that ends an assistant turn."""

    name: str
    render: Callable[..., str]
    end_of_turn: str
    models: str


TEMPLATES: dict[str, ChatTemplate] = {
    "llama2": ChatTemplate("llama2", render_llama2, "</s>", "Llama-2-chat, Chinese-Llama-2"),
    # Llama-3.1 / 3.2's own templates add a system block with dates even without a system message (lesson 02)
    "llama3": ChatTemplate("llama3", render_llama3, "<|eot_id|>", "Llama-3 Instruct; 3.1 / 3.2 add a dated system"),
    "chatml": ChatTemplate("chatml", render_chatml, "<|im_end|>", "Qwen2.5, Qwen3, SmolLM2, Yi"),
}


def get_template(name: str) -> ChatTemplate:
    """Look a template up by name, with a message that lists the known ones."""
    if name not in TEMPLATES:
        known = ", ".join(TEMPLATES)
        raise TemplateError(
            f"未知的对话模板 {name!r}，可选：{known}。\nUnknown chat template {name!r}; choose one of: {known}."
        )
    return TEMPLATES[name]


_SYSTEM_PROBE = "<<course-system-probe>>"  # a system text no chat template writes by itself


def default_system_prompt(tokenizer) -> str:
    """The system prompt the model's chat template inserts when a conversation has none ("" when it inserts none)."""
    probe = [{"role": "user", "content": "?"}]
    without = tokenizer.apply_chat_template(probe, tokenize=False)
    start, _, end = tokenizer.apply_chat_template([{"role": "system", "content": _SYSTEM_PROBE}, *probe],
                                                  tokenize=False).partition(_SYSTEM_PROBE)
    # The rendering without a system turn is the one with it, the probe replaced by the default (if any).
    if without.startswith(start) and without.endswith(end) and len(without) >= len(start) + len(end):
        return without[len(start): len(without) - len(end)]
    return ""


def reply_label(tokenizer, messages: list[Message]) -> str:
    """The last reply as LLaMA-Factory labels its predictions: through the end of turn, special tokens dropped."""
    # ChatML: "喵~<|im_end|>\n" decodes to "喵~\n", the newline after the end-of-turn token stays (Llama 3: "喵~").
    prompt = chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
    return tokenizer.decode(chat_ids(tokenizer, messages)[len(prompt):], skip_special_tokens=True)


def strip_contents(messages: list[Message]) -> list[Message]:
    """The messages with leading and trailing whitespace (spaces, newlines) removed from every content."""
    return [{**message, "content": message["content"].strip()} for message in messages]


def _edges(text: str) -> tuple[str, str]:
    """The outer whitespace of ``text`` in Chinese and English, e.g. ``starts with '  ', ends with '\\n'``."""
    if not text.strip():
        return f"只有空白 {text!r}", f"is only whitespace {text!r}"
    lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()):]
    zh = [f"开头有 {lead!r}"] * bool(lead) + [f"结尾有 {trail!r}"] * bool(trail)
    en = [f"starts with {lead!r}"] * bool(lead) + [f"ends with {trail!r}"] * bool(trail)
    return "、".join(zh), ", ".join(en)


def _unlocated_reply_error(tokenizer, messages: list[Message]) -> TemplateError:
    """Why the replies cannot be located: outer whitespace when stripping it fixes that, else the template."""
    padded = [(number, m) for number, m in enumerate(messages, start=1) if m["content"] != m["content"].strip()]
    if padded:
        stripped = strip_contents(messages)
        if assistant_labels(tokenizer, stripped, chat_ids(tokenizer, stripped)) is not None:
            turns_zh = "；".join(f"第 {n} 轮 {m['role']} {_edges(m['content'])[0]}" for n, m in padded)
            turns_en = "; ".join(f"turn {n} ({m['role']}) {_edges(m['content'])[1]}" for n, m in padded)
            return TemplateError(
                f"消息内容首尾有空格或换行（{turns_zh}），回复开头与提示词末尾合并成了不同的 token，无法定位回复："
                "请对每条内容 .strip()（helpers.data 读取文件时会自动去掉）。\n"
                f"Leading/trailing whitespace in the messages ({turns_en}) tokenizes differently at the "
                "prompt/reply boundary, so the reply cannot be located: strip every content "
                "(helpers.data's loaders do so when reading a file)."
            )
    return TemplateError(
        "这个模型的对话模板在多轮对话中会改写前文（例如删除思考过程），无法按轮次定位回复。\n"
        "This chat template rewrites earlier turns, so replies cannot be located turn by turn."
    )


def encode_with_label_mask(tokenizer, messages: list[Message]) -> dict[str, list[int]]:
    """Encode a conversation with the model's own template; learn every assistant turn, mask the rest.

    ``labels`` is ``-100`` on system and user tokens (and on the role headers), and equals
    ``input_ids`` on each assistant reply *including its end-of-turn token*, so the model
    learns to stop.
    """
    if not any(m["role"] == "assistant" for m in messages):
        raise TemplateError(
            "对话里没有 assistant 回复，全部标签都会是 -100，模型什么也学不到。\n"
            "The conversation has no assistant turn: every label would be -100 and nothing would be learned."
        )
    input_ids = chat_ids(tokenizer, messages)
    labels = assistant_labels(tokenizer, messages, input_ids)
    if labels is None:
        raise _unlocated_reply_error(tokenizer, messages)
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def mask_segments(tokenizer, input_ids: list[int], labels: list[int]) -> list[tuple[bool, str]]:
    """Group consecutive tokens into (learned?, decoded text) runs."""
    segments: list[tuple[bool, list[int]]] = []
    for token, label in zip(input_ids, labels, strict=True):
        learned = label != IGNORE_INDEX
        if segments and segments[-1][0] == learned:
            segments[-1][1].append(token)
        else:
            segments.append((learned, [token]))
    return [(learned, tokenizer.decode(ids)) for learned, ids in segments]


def label_mask_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """A plain-text view of the mask: each run of tokens, marked as ignored (-100) or learned."""
    lines = []
    for learned, text in mask_segments(tokenizer, input_ids, labels):
        tag = "学习 learn " if learned else "忽略 -100  "
        lines.append(f"[{tag}] {text!r}")
    return "\n".join(lines)


def label_mask_html(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """One coloured box per token: grey is masked (-100), green is learned; hover shows the id."""
    import html

    boxes = []
    for token, label in zip(input_ids, labels, strict=True):
        colour = "#c8f7c5" if label != IGNORE_INDEX else "#e5e5e5"
        text = html.escape(tokenizer.decode([token])).replace("\n", "↵")
        boxes.append(
            f'<span title="id={token} label={label}" style="background:{colour};margin:1px;'
            f'padding:1px 3px;border-radius:3px;font-family:monospace">{text}</span>'
        )
    legend = '<p><span style="background:#e5e5e5">灰色 = -100（不算损失）</span> ' \
        '<span style="background:#c8f7c5">绿色 = 模型要学的 token</span></p>'
    return legend + '<div style="line-height:2">' + "".join(boxes) + "</div>"

"""Course data: read JSON / JSON lines, validate rows, turn them into chat messages, encode with a label mask.

Also a command: ``python -m helpers.data validate FILE`` (exit 0 when valid, 1 with the message otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from pathlib import Path

from helpers.paths import DATA_DIR
from helpers.profiles import Profile, get_profile
from helpers.templates import IGNORE_INDEX, Message, encode_with_label_mask

HUANHUAN_SYSTEM = (DATA_DIR / "huanhuan" / "system_prompt.txt").read_text(encoding="utf-8").strip()
TANG_SYSTEM = "You are a helpful assistant and good at writing Tang poem. 你是一個樂於助人的助手且擅長寫唐詩。"

# lesson -> (train file, held-out file, system prompt used in training and inference)
COURSE_DATASETS: dict[str, tuple[str, str, str | None]] = {
    "nekoqa": ("nekoqa/train.json", "nekoqa/eval.json", None),  # NekoQA trains without a system prompt
    "tang": ("tang/Tang_training_data.json", "tang/Tang_eval_data.json", TANG_SYSTEM),
    "huanhuan": ("huanhuan/train.json", "huanhuan/eval.json", HUANHUAN_SYSTEM),
}


class DataError(ValueError):
    """A data file or row the course cannot use; the message names file, row and field."""


def read_records(path: str | Path) -> list[dict]:
    """Read a JSON array or JSON lines file (a UTF-8 BOM is accepted) into a list of dicts."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"找不到数据文件 {path} / data file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise DataError(f"{path}: 文件是空的，请放入数据 / the file is empty: add rows to it")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}: 第 {error.lineno} 行第 {error.colno} 列不是合法的 JSON（{error.msg}），"
                "请检查逗号、引号和括号。\n"
                f"{path}: invalid JSON at line {error.lineno}, column {error.colno} ({error.msg}): "
                "check commas, quotes and brackets."
            ) from None
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{path}: JSON lines 第 {number} 行第 {error.colno} 列出错（{error.msg}），"
                    "每行应是一个完整的 JSON 对象。\n"
                    f"{path}: line {number}, column {error.colno} is not valid JSON ({error.msg}); "
                    "each line must be one JSON object."
                ) from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path}: 应是由对象组成的数组 / expected a list of JSON objects")
    return records


def _row_error(path: str, index: int, field: str, problem_zh: str, problem_en: str) -> DataError:
    return DataError(
        f"{path} 第 {index} 行，字段 {field!r}：{problem_zh}\n{path} row {index}, field {field!r}: {problem_en}"
    )


def _text_field(row: dict, field: str, where: tuple[str, int], required: bool = True) -> str:
    if field not in row:
        if required:
            raise _row_error(*where, field, "缺少该字段，请补上", "missing; add it")
        return ""
    value = row[field]
    if not isinstance(value, str):
        raise _row_error(*where, field, f"应为字符串，实际是 {type(value).__name__}",
                         f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise _row_error(*where, field, "不能为空", "must not be empty")
    return value


def alpaca_to_messages(row: dict, system: str | None = None, where: tuple[str, int] = ("<row>", 0)) -> list[Message]:
    """Alpaca row -> messages: user turn is instruction and input joined by a newline (empty parts skipped)."""
    instruction = _text_field(row, "instruction", where)
    extra = _text_field(row, "input", where, required=False)
    output = _text_field(row, "output", where)
    system = _text_field(row, "system", where, required=False) or system
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    history = row.get("history", [])
    if not isinstance(history, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair) for pair in history
    ):
        raise _row_error(*where, "history", "应为 [[问, 答], ...] 形式的列表",
                         "must be a list of [question, answer] pairs")
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    user = "\n".join(part for part in (instruction, extra) if part)
    return [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": output}]


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def sharegpt_to_messages(row: dict, where: tuple[str, int] = ("<row>", 0)) -> list[Message]:
    """ShareGPT (``conversations: [{from, value}]``) or OpenAI-style (``messages: [{role, content}]``) row."""
    field, role_key, text_key = ("conversations", "from", "value") if "conversations" in row else (
        "messages", "role", "content")
    turns = row.get(field)
    if not isinstance(turns, list) or not turns:
        raise _row_error(*where, field, "应为非空的对话列表", "must be a non-empty list of turns")
    messages = []
    for turn in turns:
        role = SHAREGPT_ROLES.get(turn.get(role_key)) if isinstance(turn, dict) else None
        if role is None or not isinstance(turn.get(text_key), str):
            raise _row_error(*where, field, f"每一轮需要 {role_key} 与字符串 {text_key}",
                             f"each turn needs a known {role_key!r} and a string {text_key!r}")
        messages.append({"role": role, "content": turn[text_key]})
    return messages


def to_messages(row: dict, system: str | None = None, where: tuple[str, int] = ("<row>", 0)) -> list[Message]:
    """Any supported row format -> chat messages."""
    if "conversations" in row or "messages" in row:
        return sharegpt_to_messages(row, where)
    return alpaca_to_messages(row, system, where)


def load_conversations(path: str | Path, system: str | None = None) -> list[list[Message]]:
    """Read and validate a file; every row becomes a conversation, or a DataError names the bad row."""
    records = read_records(path)
    conversations = [to_messages(row, system, (str(path), i)) for i, row in enumerate(records, start=1)]
    counts = Counter(json.dumps(c, ensure_ascii=False) for c in conversations)
    duplicates = sum(n - 1 for n in counts.values())
    if duplicates:
        warnings.warn(f"{path}: {duplicates} 行重复 / {duplicates} duplicate rows", stacklevel=2)
    return conversations


def truncate(input_ids: list[int], labels: list[int], cutoff: int) -> tuple[list[int], list[int]]:
    """Fit a sample into ``cutoff`` tokens, LLaMA-Factory style, keeping the end of the prompt.

    The last reply is the target. If it fits in half the budget it is kept whole and the
    prompt is cut; otherwise the budget is split in proportion to the two lengths.
    """
    if len(input_ids) <= cutoff:
        return input_ids, labels
    first_target = max(i for i, label in enumerate(labels) if label == IGNORE_INDEX) + 1
    source_len, target_len = first_target, len(input_ids) - first_target
    if target_len * 2 < cutoff:
        max_target = cutoff
    elif source_len * 2 < cutoff:
        max_target = cutoff - source_len
    else:
        max_target = int(cutoff * target_len / (source_len + target_len))
    keep_target = min(max_target, target_len)
    keep_source = min(cutoff - keep_target, source_len)
    source_slice = slice(source_len - keep_source, source_len)  # the end of the prompt holds the question
    target_slice = slice(source_len, source_len + keep_target)
    return (input_ids[source_slice] + input_ids[target_slice], labels[source_slice] + labels[target_slice])


def encode_conversations(tokenizer, conversations: list[list[Message]], cutoff: int) -> list[dict[str, list[int]]]:
    """Encode every conversation with the label mask, truncating to ``cutoff`` (with a warning count)."""
    encoded, truncated = [], 0
    for messages in conversations:
        sample = encode_with_label_mask(tokenizer, messages)
        if len(sample["input_ids"]) > cutoff:
            truncated += 1
        ids, labels = truncate(sample["input_ids"], sample["labels"], cutoff)
        encoded.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    if truncated:
        warnings.warn(f"{truncated} 条样本超过 {cutoff} 个 token，已截断 / {truncated} samples truncated to {cutoff}",
                      stacklevel=2)
    return encoded


def drop_held_out(train: list[list[Message]], held_out: list[list[Message]]) -> list[list[Message]]:
    """Training conversations whose last question is not a held-out one (the full sets were not written for us)."""
    questions = {conversation[-2]["content"] for conversation in held_out}
    kept = [conversation for conversation in train if conversation[-2]["content"] not in questions]
    if len(kept) < len(train):
        dropped = len(train) - len(kept)
        print(f"训练集有 {dropped} 条的问题在留出集中，已去掉 / dropped {dropped} training rows held out for eval")
    return kept


def course_conversations(lesson: str, split: str, limit: int | None = None,
                         profile: Profile | None = None) -> list[list[Message]]:
    """A course data set as conversations; ``split`` is ``train`` or ``eval`` (the shipped held-out file).

    ``train`` is the shipped file in the tiny profile and the full public set in the gpu profile
    (``helpers.hub_data``; the shipped file when it cannot be had), without held-out questions.
    """
    from helpers.hub_data import train_file  # imported here: hub_data imports this module

    _, eval_file, system = COURSE_DATASETS[lesson]
    conversations = load_conversations(DATA_DIR / eval_file, system)
    if split == "train":
        train = load_conversations(train_file(lesson, profile or get_profile()), system)
        conversations = drop_held_out(train, conversations)
    return conversations[:limit] if limit else conversations


def validate(path: str | Path) -> str:
    """Validate a data file; return a one-line summary or raise DataError."""
    records = read_records(path)
    for i, row in enumerate(records, start=1):
        if "chosen" in row:  # a preference pair for DPO (lesson 09)
            for field in ("prompt", "chosen", "rejected"):
                _text_field(row, field, (str(path), i))
            continue
        if "output" not in row and "conversations" not in row and "messages" not in row:
            _text_field(row, "instruction", (str(path), i))  # a test file without outputs: prompts only
            continue
        to_messages(row, None, (str(path), i))
    return f"{path}: {len(records)} 行全部有效 / all {len(records)} rows valid"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.data")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="check data files / 检查数据文件")
    check.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    status = 0
    for file in args.files:
        try:
            print(validate(file))
        except DataError as error:
            print(error, file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())

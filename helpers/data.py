"""Course data files: read JSON / JSON lines and CSV, validate rows, turn them into chat messages.

Also a command: ``python -m helpers.data validate FILE`` (exit 0 when valid, 1 with the message otherwise), and
``python -m helpers.data csv2json qa.csv qa.json`` (a question / answer table -> Alpaca JSON).

Every row is checked for role order (after an optional leading system turn, user and assistant alternate from
the user's, and the assistant has the last turn), as LLaMA-Factory does when it drops invalid rows.
Leading and trailing whitespace of every message is stripped when rows are read, with one warning per file
counting the rows changed: a reply such as ``"  喵~\n"`` would otherwise tokenize differently at the
prompt/reply boundary and could not be located by ``encode_with_label_mask``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from helpers.messages import warn
from helpers.paths import DATA_DIR
from helpers.registry import LESSONS
from helpers.templates import Message, strip_contents


def shipped_row_count(lesson: str) -> int:
    """Rows of an SFT lesson's shipped training file."""
    return len(read_records(DATA_DIR / LESSONS[lesson].train_file))


# lesson 09 (DPO): preference pairs written for the course
PREFERENCE_FILES = {"train": DATA_DIR / "nekoqa" / "dpo_train.json", "eval": DATA_DIR / "nekoqa" / "dpo_eval.json"}


class DataError(ValueError):
    """A data file or row the course cannot use; the message names file, row and field."""


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type (what students see in their file, not Python's name)."""
    names = {bool: "true/false", int: "number", float: "number", str: "string", list: "list", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _decode(path: Path) -> str:
    """The file's text without a UTF-8 BOM; another encoding (GBK, UTF-16) is a DataError naming the line."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}: 第 {line} 行不是 UTF-8 编码（常见于记事本或 Excel 存的 GBK 文件），请用 UTF-8 另存。\n"
            f"{path}: line {line} is not UTF-8 (often a GBK file saved by Notepad or Excel): save it as UTF-8."
        ) from None


def _parse_lines(path: Path, text: str) -> list:
    """JSON lines: one JSON value per non-blank line."""
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
    return records


def _parse(path: Path, text: str) -> list:
    """A JSON array, or JSON lines (tried when the whole text is not one JSON value)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if not text.lstrip().startswith("["):
            return _parse_lines(path, text)
        raise DataError(
            f"{path}: 第 {error.lineno} 行第 {error.colno} 列不是合法的 JSON（{error.msg}），"
            "请检查逗号、引号和括号。\n"
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno} ({error.msg}): "
            "check commas, quotes and brackets."
        ) from None
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and "\n" not in text.strip():
        return [value]  # JSON lines with a single row
    raise DataError(
        f"{path}: 整个文件是一个 {json_type(value)}，应是数组 [{{...}}, {{...}}] 或每行一个 JSON 对象。\n"
        f"{path}: the whole file is one {json_type(value)}; write an array [{{...}}, {{...}}] "
        "or one JSON object per line."
    )


def read_records(path: str | Path) -> list[dict]:
    """Read a JSON array or JSON lines file (a UTF-8 BOM is accepted) into a list of dicts."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"找不到数据文件 {path}，请检查路径。\ndata file not found: {path}; check the path.")
    text = _decode(path)
    if not text.strip():
        raise DataError(f"{path}: 文件是空的，请放入数据。\n{path}: the file is empty: add rows to it.")
    records = _parse(path, text)
    if not records:
        raise DataError(f"{path}: 没有任何数据行，请放入数据。\n{path}: the file has no rows: add rows to it.")
    for index, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(
                f"{path} 第 {index} 条：应是 JSON 对象 {{...}}，实际是 {json_type(record)}\n"
                f"{path} row {index}: must be a JSON object {{...}}, got {json_type(record)}"
            )
    return records


def _row_error(path: str, index: int, field: str, problem_zh: str, problem_en: str) -> DataError:
    return DataError(
        f"{path} 第 {index} 条，字段 {field!r}：{problem_zh}\n{path} row {index}, field {field!r}: {problem_en}"
    )


def _text_field(row: dict, field: str, where: tuple[str, int], required: bool = True) -> str:
    if field not in row:
        if required:
            found = ", ".join(map(str, row)) or "-"
            raise _row_error(*where, field, f"缺少该字段，请补上（这一条的字段：{found}）",
                             f"missing; add it (fields in this row: {found})")
        return ""
    value = row[field]
    if not isinstance(value, str):
        raise _row_error(*where, field, f"应为字符串（用双引号括起来），实际是 {json_type(value)}",
                         f"must be a string (in double quotes), got {json_type(value)}")
    if required and not value.strip():
        raise _row_error(*where, field, "不能为空：请填写内容或删除这一条",
                         "must not be empty: fill it in or delete the row")
    return value


def _pair_problem(pair: object) -> tuple[str, str] | None:
    """What is wrong with one Alpaca history pair (Chinese, English), naming the turn and its role; None when fine."""
    if not isinstance(pair, list):
        return f"实际是 {json_type(pair)}", f"got {json_type(pair)}"
    if len(pair) < 2:
        missing = ("问题（用户轮）和回答（助手轮）", "the question (user turn) and the answer (assistant turn)") \
            if not pair else ("回答（助手轮）", "the answer (assistant turn)")
        return f"缺少{missing[0]}", f"{missing[1]} is missing"
    if len(pair) > 2:
        return (f"有 {len(pair)} 项，多出的部分请拆成新的一对",
                f"has {len(pair)} items: split the extra ones into a new pair")
    for item, (zh, en) in zip(pair, (("问题（用户轮）", "the question (user turn)"),
                                     ("回答（助手轮）", "the answer (assistant turn)")), strict=True):
        if not isinstance(item, str):
            return f"{zh}应为字符串，实际是 {json_type(item)}", f"{en} must be a string, got {json_type(item)}"
    return None


def _history(row: dict, where: tuple[str, int]) -> list[list[str]]:
    """The earlier turns of an Alpaca row: a list of [question, answer] string pairs."""
    history = row.get("history", [])
    if not isinstance(history, list):
        raise _row_error(*where, "history", f"应为列表，实际是 {json_type(history)}；格式 [[\"问\", \"答\"], ...]",
                         f'must be a list, got {json_type(history)}; format [["question", "answer"], ...]')
    for number, pair in enumerate(history, start=1):
        problem = _pair_problem(pair)
        if problem:
            raise _row_error(*where, "history", f"第 {number} 对应为两个字符串 [\"问\", \"答\"]：{problem[0]}",
                             f'pair {number} must be two strings ["question", "answer"]: {problem[1]}')
    return history


def alpaca_to_messages(row: dict, system: str | None = None, where: tuple[str, int] = ("<row>", 0)) -> list[Message]:
    """Alpaca row -> messages: user turn is instruction and input joined by a newline (empty parts skipped)."""
    instruction = _text_field(row, "instruction", where)
    extra = _text_field(row, "input", where, required=False)
    output = _text_field(row, "output", where)
    system = _text_field(row, "system", where, required=False) or system
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    for question, answer in _history(row, where):
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    user = "\n".join(part for part in (instruction, extra) if part)
    return [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": output}]


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _check_role_order(tags: list[str], roles: list[str], field: str, where: tuple[str, int]) -> None:
    """After an optional leading system turn, user and assistant alternate from the user's; the assistant ends.

    ``tags`` are the roles as written in the file (``human``, ``gpt``...), ``roles`` the chat roles they map to.
    """
    role_key, user, assistant = ("from", "human", "gpt") if field == "conversations" else ("role", "user", "assistant")
    article = "an" if assistant == "assistant" else "a"
    names = {"user": (f"用户（{user}）", f"a {user!r}"),
             "assistant": (f"助手（{assistant}）", f"{article} {assistant!r}")}
    rule_zh = "规则：可选的第 1 轮 system 之后，用户与助手严格交替，从用户开始，以助手回复结束"
    rule_en = "after an optional first system turn, user and assistant must alternate, starting with the user " \
              "and ending with the assistant's reply"
    first = 2 if roles[0] == "system" else 1
    for number, (tag, role) in enumerate(zip(tags, roles, strict=True), start=1):
        turn = f"turn {number} ({role_key} {tag!r})"
        if role == "system" and number == 1:
            continue
        if role == "system":
            raise _row_error(*where, field, f"第 {number} 轮是 {tag!r}：system 只能是第 1 轮（{rule_zh}）",
                             f"{turn}: a system turn may only be the first turn ({rule_en})")
        expected = "user" if (number - first) % 2 == 0 else "assistant"
        if role != expected:
            raise _row_error(*where, field, f"第 {number} 轮应是{names[expected][0]}，实际是 {tag!r}（{rule_zh}）",
                             f"{turn} should be {names[expected][1]} turn ({rule_en})")
    if roles[-1] != "assistant":
        raise _row_error(*where, field, f"最后一轮（第 {len(tags)} 轮，{tags[-1]!r}）是用户提问，没有回复："
                                        "请补上助手回复或删掉这一轮",
                         f"the last turn (turn {len(tags)}, {role_key} {tags[-1]!r}) is the user's and has no reply: "
                         f"add the {assistant!r} reply or remove that turn")


def sharegpt_to_messages(row: dict, where: tuple[str, int] = ("<row>", 0)) -> list[Message]:
    """ShareGPT (``conversations: [{from, value}]``) or OpenAI-style (``messages: [{role, content}]``) row."""
    field, role_key, text_key = ("conversations", "from", "value") if "conversations" in row else (
        "messages", "role", "content")
    turns = row.get(field)
    if not isinstance(turns, list) or not turns:
        raise _row_error(*where, field, "应为非空的对话列表：至少放入一问一答",
                         "must be a non-empty list of turns: put in at least a question and its reply")
    messages, tags = [], []
    for number, turn in enumerate(turns, start=1):
        role = SHAREGPT_ROLES.get(turn.get(role_key)) if isinstance(turn, dict) else None
        if role is None or not isinstance(turn.get(text_key), str):
            known = ", ".join(SHAREGPT_ROLES)
            raise _row_error(*where, field, f"第 {number} 轮需要 {role_key}（{known} 之一）与字符串 {text_key}",
                             f"turn {number} needs a {role_key!r} (one of {known}) and a string {text_key!r}")
        messages.append({"role": role, "content": turn[text_key]})
        tags.append(turn[role_key])
    if not any(m["role"] == "assistant" for m in messages):
        raise _row_error(*where, field, "没有助手（gpt/assistant）回复，模型无从学习：请补上回复",
                         "has no gpt/assistant reply, so there is nothing to learn: add the reply")
    _check_role_order(tags, [m["role"] for m in messages], field, where)
    return messages


def _unstripped_messages(row: dict, system: str | None, where: tuple[str, int]) -> list[Message]:
    """Any schema's row as messages; ``system`` starts the rows that have no system turn of their own."""
    if "conversations" in row or "messages" in row:
        messages = sharegpt_to_messages(row, where)
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        return messages
    return alpaca_to_messages(row, system, where)


def to_messages(row: dict, system: str | None = None, where: tuple[str, int] = ("<row>", 0)) -> list[Message]:
    """Any supported row format -> chat messages, each content stripped of leading and trailing whitespace."""
    return strip_contents(_unstripped_messages(row, system, where))


def load_conversations(path: str | Path, system: str | None = None) -> list[list[Message]]:
    """Read and validate a file; every row becomes a conversation, or a DataError names the bad row.

    ``system``: the system prompt of every row that has none (an Alpaca ``system`` field or a first system turn).
    """
    numbered = [(i, _unstripped_messages(row, system, (str(path), i)))
                for i, row in enumerate(read_records(path), start=1)]
    warn_whitespace(path, numbered)
    conversations = [strip_contents(messages) for _, messages in numbered]
    warn_duplicates(path, conversations)
    return conversations


def warn_whitespace(path: str | Path, numbered: list[tuple[int, list[Message]]]) -> None:
    """Warn once for the file, counting rows and naming the first turn, when contents have outer whitespace."""
    padded = [(row, turn, message["role"]) for row, messages in numbered
              for turn, message in enumerate(messages, start=1) if message["content"] != message["content"].strip()]
    if padded:
        (row, turn, role), count = padded[0], len({row for row, *_ in padded})
        warn(
            f"{path}: {count} 条的内容首尾有空格或换行（例如第 {row} 条第 {turn} 轮 {role}），读取时已去掉；"
            "否则回复开头的空白会与提示词末尾合并成不同的 token。\n"
            f"{path}: {count} rows had leading/trailing spaces or newlines (e.g. row {row}, turn {turn}, {role}); "
            "stripped when reading, as they tokenize differently at the prompt/reply boundary."
        )


def warn_duplicates(path: str | Path, rows: list) -> None:
    """Warn (naming the first repeat) when rows repeat: a duplicated sample counts twice in training."""
    first_seen: dict[str, int] = {}
    repeats = []
    for index, row in enumerate(rows, start=1):
        key = json.dumps(row, ensure_ascii=False, sort_keys=True)
        if key in first_seen:
            repeats.append((index, first_seen[key]))
        first_seen.setdefault(key, index)
    if repeats:
        (row, first), count = repeats[0], len(repeats)
        warn(
            f"{path}: {count} 条重复（例如第 {row} 条与第 {first} 条相同），重复的样本在训练中权重更大，建议删除。\n"
            f"{path}: {count} duplicate rows (e.g. row {row} repeats row {first}); "
            "duplicates weigh more in training: remove them."
        )


def load_preferences(split: str, path: Path | None = None) -> list[dict[str, list[Message]]]:
    """Preference pairs in TRL's conversational format: ``prompt``, ``chosen``, ``rejected`` message lists."""
    path = path or PREFERENCE_FILES[split]
    validate(path)  # a clear error naming file, row and field on a broken pair
    return [
        {
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
        for row in read_records(path)
    ]


def validate(path: str | Path) -> str:
    """Validate a data file; return a one-line summary or raise DataError."""
    records = read_records(path)
    # A test file has prompts only; in any other file a row without its reply is a mistake.
    prompts_only = not any(key in row for row in records for key in ("output", "conversations", "messages", "chosen"))
    chats = []
    for i, row in enumerate(records, start=1):
        if "chosen" in row:  # a preference pair for DPO (lesson 09): prompt, chosen, rejected
            for field in ("prompt", "chosen", "rejected"):
                _text_field(row, field, (str(path), i))
            continue
        if prompts_only:
            _text_field(row, "instruction", (str(path), i))
            continue
        chats.append((i, _unstripped_messages(row, None, (str(path), i))))
    warn_whitespace(path, chats)
    warn_duplicates(path, records)
    return f"{path}: {len(records)} 行全部有效 / all {len(records)} rows valid"


# csv2json's default columns, tried in order: the first header name present is used.
QUESTION_COLUMNS = ("question", "instruction", "问题")
ANSWER_COLUMNS = ("answer", "output", "回答")


def _csv_column(path: Path, header: list[str], chosen: str | None, defaults: tuple[str, ...], option: str) -> str:
    """The header name to read: ``chosen`` when given, else the first of ``defaults`` present; or a DataError."""
    found = [chosen] if chosen else [name for name in defaults if name in header]
    if found and found[0] in header:
        return found[0]
    wanted = repr(chosen) if chosen else " / ".join(map(repr, defaults))
    listed = ", ".join(map(repr, header))
    raise DataError(
        f"{path}: 表头里没有 {wanted} 列（表头是：{listed}）；请用 {option} 列名 指定。\n"
        f"{path}: no column {wanted} in the header (it has: {listed}); name the column with {option} NAME."
    )


def csv_to_alpaca(path: str | Path, question: str | None = None, answer: str | None = None) -> list[dict[str, str]]:
    """A CSV table (UTF-8, with a header row) as Alpaca rows: ``question`` -> instruction, ``answer`` -> output."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"找不到 CSV 文件 {path}，请检查路径。\nCSV file not found: {path}; check the path.")
    reader = csv.DictReader(io.StringIO(_decode(path), newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    if not header:
        raise DataError(f"{path}: 文件是空的，第 1 行应是表头。\n{path}: the file is empty; line 1 must be the header.")
    reader.fieldnames = header
    columns = (_csv_column(path, header, question, QUESTION_COLUMNS, "--question"),
               _csv_column(path, header, answer, ANSWER_COLUMNS, "--answer"))
    rows = []
    for record in reader:
        cells = [(record.get(column) or "").strip() for column in columns]
        for column, cell in zip(columns, cells, strict=True):
            if not cell:
                raise DataError(f"{path} 第 {reader.line_num} 行：{column!r} 列是空的，请填写或删除这一行。\n"
                                f"{path} line {reader.line_num}: column {column!r} is empty; fill it in or delete "
                                "the line.")
        rows.append({"instruction": cells[0], "input": "", "output": cells[1]})
    if not rows:
        raise DataError(f"{path}: 表头下面没有数据行。\n{path}: there are no rows under the header.")
    return rows


def csv_to_json(source: str | Path, target: str | Path, question: str | None = None,
                answer: str | None = None) -> str:
    """Write ``source``'s question / answer table as an Alpaca JSON file; return what was written."""
    rows = csv_to_alpaca(source, question, answer)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(rows, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    warn_duplicates(target, rows)
    return (f"{target}: 写入 {len(rows)} 行 Alpaca 数据 / wrote {len(rows)} Alpaca rows\n"
            f"训练 / train: python scripts/train.py --data {target} --output outputs/mydata")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.data")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="check data files / 检查数据文件")
    check.add_argument("files", nargs="+", type=Path)
    convert = sub.add_parser("csv2json", help="问答 CSV 表格转成 Alpaca JSON / a question-answer CSV to Alpaca JSON",
                             description="CSV 须为 UTF-8、第 1 行是表头 / UTF-8, header on line 1")
    convert.add_argument("csv_file", type=Path)
    convert.add_argument("json_file", type=Path)
    convert.add_argument("--question", help=f"问题所在的列，默认 / column of the questions, default: "
                                            f"{' / '.join(QUESTION_COLUMNS)}")
    convert.add_argument("--answer", help=f"回答所在的列，默认 / column of the answers, default: "
                                          f"{' / '.join(ANSWER_COLUMNS)}")
    args = parser.parse_args(argv)
    if args.command == "csv2json":
        try:
            print(csv_to_json(args.csv_file, args.json_file, args.question, args.answer))
        except DataError as error:
            print(error, file=sys.stderr)
            return 1
        return 0
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

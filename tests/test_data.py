import json
import subprocess
import sys
import warnings

import pytest
import torch

from helpers.data import DataError, alpaca_to_messages, load_conversations, main, read_records, sharegpt_to_messages
from helpers.encoding import encode_conversations
from helpers.hub_data import course_conversations
from helpers.lesson03_cells import truncate
from helpers.messages import CourseWarning
from helpers.paths import DATA_DIR
from helpers.registry import SFT_LESSONS
from helpers.templates import IGNORE_INDEX

SHIPPED = sorted(DATA_DIR.glob("*/*.json"))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_alpaca_row_becomes_system_history_user_assistant():
    row = {"instruction": "续写", "input": "床前明月光，", "output": "疑是地上霜。", "history": [["你好", "你好呀"]]}
    assert alpaca_to_messages(row, system="诗人") == [
        {"role": "system", "content": "诗人"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好呀"},
        {"role": "user", "content": "续写\n床前明月光，"},
        {"role": "assistant", "content": "疑是地上霜。"},
    ]


def test_empty_input_is_skipped_and_row_system_wins():
    row = {"instruction": "皇上驾到", "input": "", "output": "臣妾恭迎皇上。", "system": "你是甄嬛"}
    messages = alpaca_to_messages(row, system="别的提示词")
    assert messages[0]["content"] == "你是甄嬛" and messages[1]["content"] == "皇上驾到"


def test_sharegpt_and_openai_rows():
    sharegpt = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "喵"}]}
    openai = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "喵"}]}
    assert sharegpt_to_messages(sharegpt) == sharegpt_to_messages(openai)


def test_encoding_equals_chat_template_with_exact_labels(tiny_tokenizer):
    # Prevents: training on a template that inference does not use, or learning the prompt.
    conversations = course_conversations("huanhuan", "eval", 3)
    for conversation, row in zip(conversations, encode_conversations(tiny_tokenizer, conversations, 10_000),
                                 strict=True):
        assert row["input_ids"] == tiny_tokenizer.apply_chat_template(conversation)["input_ids"]
        prompt = tiny_tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True)["input_ids"]
        reply = tiny_tokenizer(conversation[-1]["content"] + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        assert row["labels"] == [IGNORE_INDEX] * len(prompt) + reply


def test_truncation_keeps_the_start_of_the_prompt():
    # Prevents: the system prompt and the role headers cut away (the old rule kept the end of the prompt).
    ids = list(range(100))
    labels = [IGNORE_INDEX] * 90 + ids[90:]
    new_ids, new_labels = truncate(ids, labels, 40)
    assert new_ids == ids[:30] + ids[90:] and new_labels == [IGNORE_INDEX] * 30 + ids[90:]


def test_truncation_splits_the_budget_when_both_are_long():
    ids = list(range(100))
    labels = [IGNORE_INDEX] * 40 + ids[40:]
    new_ids, new_labels = truncate(ids, labels, 50)
    assert new_ids == ids[:20] + ids[40:70] and new_labels.count(IGNORE_INDEX) == 20


def llamafactory_truncation(pairs: list[tuple[list[int], list[int]]], cutoff: int) -> tuple[list[int], list[int]]:
    """Transcribed from LLaMA-Factory 0.9.5 (Apache-2.0): ``infer_seqlen`` and the turn loop of
    ``SupervisedDatasetProcessor._encode_data_example`` (no efficient_eos, train_on_prompt and mask_history off)."""
    input_ids, labels, total_length = [], [], 0
    for source_ids, target_ids in pairs:
        if total_length >= cutoff:
            break
        source_len, target_len, left = len(source_ids), len(target_ids), cutoff - total_length
        if target_len * 2 < left:
            max_target_len = left
        elif source_len * 2 < left:
            max_target_len = left - source_len
        else:
            max_target_len = int(left * (target_len / (source_len + target_len)))
        new_target_len = min(max_target_len, target_len)
        new_source_len = min(max(left - new_target_len, 0), source_len)
        source_ids, target_ids = source_ids[:new_source_len], target_ids[:new_target_len]
        total_length += new_source_len + new_target_len
        input_ids += source_ids + target_ids
        labels += [IGNORE_INDEX] * new_source_len + target_ids
    return input_ids, labels


def template_pairs(tokenizer, messages) -> list[tuple[list[int], list[int]]]:
    """(prompt, reply) ids of each turn straight from the chat template, as LLaMA-Factory's encode_multiturn gives."""
    def ids(part, generation_prompt=False):
        return list(tokenizer.apply_chat_template(part, add_generation_prompt=generation_prompt)["input_ids"])
    pairs, done = [], 0
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt, through_reply = ids(messages[:i], True), ids(messages[: i + 1])
            pairs.append((through_reply[done:len(prompt)], through_reply[len(prompt):]))
            done = len(through_reply)
    return pairs


def long_multi_turn_conversations() -> list[list[dict]]:
    """Huanhuan and Tang rows chained three turns deep under one system prompt, long enough to be cut."""
    rows = []
    for lesson in ("huanhuan", "tang"):
        conversations = course_conversations(lesson, "train")
        for start in range(0, 12, 3):
            turns = [m for c in conversations[start:start + 3] for m in c if m["role"] != "system"]
            rows.append(conversations[start][:1] + turns)
    return rows


@pytest.mark.parametrize("cutoff", [48, 96, 192, 300])
def test_truncation_matches_llamafactory_on_long_multi_turn_rows(tiny_tokenizer, cutoff):
    # Prevents: the course training on different tokens than LLaMA-Factory for the same row and cutoff.
    conversations = long_multi_turn_conversations()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CourseWarning)
        ours = encode_conversations(tiny_tokenizer, conversations, cutoff)
    cut = 0
    for messages, row in zip(conversations, ours, strict=True):
        pairs = template_pairs(tiny_tokenizer, messages)
        cut += sum(len(s) + len(t) for s, t in pairs) > cutoff
        assert (row["input_ids"], row["labels"]) == llamafactory_truncation(pairs, cutoff)
    assert cut >= len(conversations) // 2  # the rows really were cut, in a turn other than the last for some


def test_truncated_rows_keep_the_system_prompt_and_headers(tiny_tokenizer):
    # Prevents: a long Tang row starting mid-prompt (system prompt lost, possibly mid-character).
    conversations = course_conversations("tang", "train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CourseWarning)
        rows = encode_conversations(tiny_tokenizer, conversations, 64)
    for messages, row in zip(conversations, rows, strict=True):
        prompt = tiny_tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True)["input_ids"]
        masked = next(i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX)
        assert row["input_ids"][:masked] == list(prompt)[:masked]  # the start of the prompt, then the reply
        assert tiny_tokenizer.decode(row["input_ids"]).startswith("<|im_start|>system\n" + messages[0]["content"][:20])


def test_generation_prompts_are_never_cut(tiny_tokenizer):
    # Prevents: an evaluation prompt cut at the cutoff so that it no longer ends with the assistant header.
    from helpers.lessons import predict

    class EchoModel:
        """Stands in for a model: generate returns the prompt and one pad token."""
        device, generation_config = "cpu", type("Config", (), {"eos_token_id": 2})()

        def eval(self):
            return self

        def generate(self, input_ids, **_):
            return torch.nn.functional.pad(input_ids, (0, 1), value=2)

    conversations = sorted(course_conversations("tang", "eval"), key=lambda c: -len(str(c)))[:2]
    for record, conversation in zip(predict(EchoModel(), tiny_tokenizer, conversations, 1), conversations,
                                    strict=True):
        assert record["prompt"].endswith("<|im_start|>assistant\n")
        assert conversation[-2]["content"] in record["prompt"]


def test_truncation_is_counted_in_a_warning(tiny_tokenizer):
    # Prevents: rows silently cut to the cutoff (replies lost) with no count and no hint to raise the cutoff.
    conversations = course_conversations("nekoqa", "eval", 4)
    with pytest.warns(UserWarning, match="4 samples truncated to 20 tokens; raise the cutoff"):
        rows = encode_conversations(tiny_tokenizer, conversations, 20)
    assert all(len(r["input_ids"]) == 20 and any(t != IGNORE_INDEX for t in r["labels"]) for r in rows)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("lines.jsonl", '\ufeff{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": "d"}\n'),
        ("array.json", '\ufeff[\n {"instruction": "a", "output": "b"},\n {"instruction": "c", "output": "d"}\n]'),
        ("plain.json", '[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]'),
    ],
)
def test_json_lines_array_and_bom_are_read(tmp_path, name, text):
    # Prevents: "Expecting value: line 1 column 1" on a file saved with a BOM by Windows Notepad, or on JSON lines.
    assert len(read_records(write(tmp_path, name, text))) == 2


def test_one_line_json_lines_file_is_one_row(tmp_path):
    assert read_records(write(tmp_path, "one.jsonl", '{"instruction": "a", "output": "b"}\n')) == [
        {"instruction": "a", "output": "b"}]


ROW = '{"instruction": "a", "output": "b"}'
# Every bad file a student may bring, and the part of the English line of the message that says what is wrong.
BAD_FILES = [
    ("array-syntax", '[{"instruction": "a", "output": "b"},]', "invalid JSON at line 1, column 38"),
    ("array-syntax-line-3", '[\n' + ROW + ',\n{"instruction": "a" "output": "b"}\n]', "invalid JSON at line 3, column"),
    ("lines-syntax", ROW + '\n{"instruction": "a", "output": b}\n', "line 2, column 32 is not valid JSON"),
    ("empty", "", "the file is empty"),
    ("blank", "\n  \n", "the file is empty"),
    ("no-rows", "[]", "the file has no rows"),
    ("one-object", '{\n "data": [' + ROW + ']\n}', "the whole file is one object"),
    ("string", '"hello"', "the whole file is one string"),
    ("row-not-object", '["床前明月光"]', "row 1: must be a JSON object {...}, got string"),
    ("missing-instruction", '[{"input": "a", "output": "b"}]', "row 1, field 'instruction': missing; add it"),
    ("missing-output", '[' + ROW + ', {"instruction": "c"}]', "row 2, field 'output': missing; add it"),
    ("number", '[{"instruction": 3, "output": "b"}]', "'instruction': must be a string (in double quotes), got number"),
    ("null-input", '[{"instruction": "a", "input": null, "output": "b"}]', "field 'input': must be a string"),
    ("list-output", '[{"instruction": "a", "output": ["b"]}]', "'output': must be a string (in double quotes), got"),
    ("blank-instruction", '[{"instruction": " ", "output": "b"}]', "field 'instruction': must not be empty"),
    ("empty-output", '[{"instruction": "a", "output": ""}]', "field 'output': must not be empty"),
    ("history-string", '[{"instruction": "a", "output": "b", "history": "x"}]', "'history': must be a list, got"),
    ("history-pair", '[{"instruction": "a", "output": "b", "history": [["q", "a"], ["x"]]}]',
     "field 'history': pair 2 must be two strings"),
    ("sharegpt-empty", '[{"conversations": []}]', "field 'conversations': must be a non-empty list"),
    ("sharegpt-role", '[{"conversations": [{"from": "bot", "value": "hi"}]}]', "turn 1 needs a 'from' (one of"),
    ("sharegpt-no-reply", '[{"conversations": [{"from": "human", "value": "hi"}]}]', "has no gpt/assistant reply"),
    # Role order (issue 15): LLaMA-Factory drops these rows; the course names row, turn and role instead.
    ("sharegpt-two-gpt", '[{"conversations": [{"from": "gpt", "value": "a"}, {"from": "gpt", "value": "b"}]}]',
     "row 1, field 'conversations': turn 1 (from 'gpt') should be a 'human' turn"),
    ("messages-end-with-user", '[' + ROW + ', {"messages": [{"role": "user", "content": "q"}, '
     '{"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]}]',
     "row 2, field 'messages': the last turn (turn 3, role 'user') is the user's and has no reply"),
    ("messages-start-with-assistant", '[{"messages": [{"role": "assistant", "content": "a"}, '
     '{"role": "user", "content": "q"}, {"role": "assistant", "content": "a2"}]}]',
     "row 1, field 'messages': turn 1 (role 'assistant') should be a 'user' turn"),
    ("messages-two-users", '[{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, '
     '{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}]}]',
     "row 1, field 'messages': turn 3 (role 'user') should be an 'assistant' turn"),
    ("messages-system-in-middle", '[{"messages": [{"role": "user", "content": "q"}, '
     '{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}]',
     "row 1, field 'messages': turn 2 (role 'system'): a system turn may only be the first turn"),
    ("history-missing-answer", '[' + ROW + ', {"instruction": "a", "output": "b", "history": [["q", "a"], ["x"]]}]',
     "row 2, field 'history': pair 2 must be two strings [\"question\", \"answer\"]: "
     "the answer (assistant turn) is missing"),
    ("history-number-answer", '[{"instruction": "a", "output": "b", "history": [["q", 3]]}]',
     "row 1, field 'history': pair 1 must be two strings [\"question\", \"answer\"]: "
     "the answer (assistant turn) must be a string, got number"),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_files_name_file_row_and_field(tmp_path, case, text, expected):
    # Prevents: a KeyError / JSONDecodeError traceback deep in training instead of "file, row, field: fix this".
    path = write(tmp_path, "bad.json", text)
    with pytest.raises(DataError) as failure:
        load_conversations(path)
    message = str(failure.value)
    zh, en = message.split("\n")
    assert expected in en and str(path) in zh and str(path) in en
    assert any("\u4e00" <= ch <= "\u9fff" for ch in zh)  # the first line is Chinese


@pytest.mark.parametrize(("case", "text", "expected"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_validate_command_fails_on_each_bad_file(tmp_path, capsys, case, text, expected):
    # Prevents: `python -m helpers.data validate` saying OK (exit 0) on a file that breaks training.
    path = write(tmp_path, "bad.json", text)
    assert main(["validate", str(path)]) == 1
    assert expected in capsys.readouterr().err


def test_missing_file_and_non_utf8_file_are_clear(tmp_path):
    # Prevents: UnicodeDecodeError on a GBK file saved by Excel / Notepad, FileNotFoundError on a typo.
    gbk = tmp_path / "gbk.json"
    gbk.write_bytes(f'[{ROW},\n{{"instruction": "床前明月光", "output": "b"}}]'.encode("gbk"))
    with pytest.raises(DataError, match="line 2 is not UTF-8.*save it as UTF-8"):
        read_records(gbk)
    with pytest.raises(DataError, match="data file not found.*check the path"):
        read_records(tmp_path / "typo.json")
    assert main(["validate", str(gbk), str(tmp_path / "typo.json")]) == 1


def test_prompt_only_test_file_is_valid(tmp_path):
    # The HW5 test file has no outputs: validate accepts prompts-only files (a mixed file needs every output).
    path = write(tmp_path, "test.json", '[{"instruction": "a", "input": "b"}]')
    assert main(["validate", str(path)]) == 0


def test_duplicate_rows_warn(tmp_path):
    # Prevents: silently training twice on repeated rows (they weigh double).
    row = {"instruction": "a", "output": "b"}
    path = write(tmp_path, "dup.json", json.dumps([row, {"instruction": "c", "output": "d"}, row, row]))
    with pytest.warns(UserWarning, match=r"2 duplicate rows \(e.g. row 3 repeats row 1\).*remove them"):
        load_conversations(path)
    with pytest.warns(UserWarning, match="2 duplicate rows"):
        assert main(["validate", str(path)]) == 0


def test_validate_command_passes_on_shipped_files_and_fails_on_a_broken_one(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "helpers.data", "validate", *map(str, SHIPPED)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert len(SHIPPED) >= 8 and ok.stdout.count("valid") == len(SHIPPED)
    broken = write(tmp_path, "broken.json", '[{"instruction": "a", "output": "b"}')
    bad = subprocess.run([sys.executable, "-m", "helpers.data", "validate", str(broken)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "broken.json" in bad.stderr and "line" in bad.stderr


def test_validate_command_rejects_a_broken_role_order_without_a_traceback(tmp_path):
    # Prevents: `validate` passing a ShareGPT file whose rows LLaMA-Factory drops (two gpt turns, no human).
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "喵"}]},
            {"conversations": [{"from": "gpt", "value": "喵"}, {"from": "gpt", "value": "喵喵"}]}]
    path = write(tmp_path, "roles.json", json.dumps(rows, ensure_ascii=False))
    bad = subprocess.run([sys.executable, "-m", "helpers.data", "validate", str(path)], capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    zh, en = bad.stderr.strip().split("\n")
    assert f"{path} 第 2 条，字段 'conversations'：第 1 轮应是用户（human）" in zh
    assert f"{path} row 2, field 'conversations': turn 1 (from 'gpt') should be a 'human' turn" in en


VALID_MULTI_TURN = {
    "sharegpt": {"conversations": [{"from": "system", "value": "猫娘"}, {"from": "human", "value": "你好"},
                                   {"from": "gpt", "value": "主人好喵"}, {"from": "human", "value": "吃什么"},
                                   {"from": "gpt", "value": "小鱼干"}]},
    "openai": {"messages": [{"role": "system", "content": "猫娘"}, {"role": "user", "content": "你好"},
                            {"role": "assistant", "content": "主人好喵"}, {"role": "user", "content": "吃什么"},
                            {"role": "assistant", "content": "小鱼干"}]},
    "alpaca": {"system": "猫娘", "history": [["你好", "主人好喵"]], "instruction": "吃什么", "output": "小鱼干"},
}


@pytest.mark.parametrize("schema", VALID_MULTI_TURN)
def test_valid_multi_turn_rows_pass_in_each_schema(tmp_path, schema):
    # Prevents: the role-order check rejecting good multi-turn data (with and without a system turn).
    row = VALID_MULTI_TURN[schema]
    without_system = json.loads(json.dumps(row))
    for turns in (without_system.get("conversations"), without_system.get("messages")):
        if turns:
            turns.pop(0)
    without_system.pop("system", None)
    path = write(tmp_path, f"{schema}.json", json.dumps([row, without_system], ensure_ascii=False))
    assert main(["validate", str(path)]) == 0
    with_system, plain = load_conversations(path)
    assert [m["role"] for m in with_system] == ["system", "user", "assistant", "user", "assistant"]
    assert [m["content"] for m in with_system] == ["猫娘", "你好", "主人好喵", "吃什么", "小鱼干"]
    assert plain == with_system[1:]


def test_outer_whitespace_is_stripped_with_one_warning_per_file(tmp_path, tiny_tokenizer):
    # Prevents: a scraped reply like "  喵~\n" failing with "this chat template rewrites earlier turns".
    rows = [{"instruction": "你是谁", "output": "  喵~\n"}, {"instruction": "早上好", "output": "早喵"},
            {"conversations": [{"from": "human", "value": " 饿了\n"}, {"from": "gpt", "value": "吃小鱼干\n\n"}]}]
    path = write(tmp_path, "padded.json", json.dumps(rows, ensure_ascii=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conversations = load_conversations(path)
    (warning,) = caught  # one warning for the file, not one per row or turn
    assert issubclass(warning.category, CourseWarning)
    zh, en = str(warning.message).split("\n")
    assert f"{path}: 2 条的内容首尾有空格或换行（例如第 1 条第 2 轮 assistant）" in zh
    assert f"{path}: 2 rows had leading/trailing spaces or newlines (e.g. row 1, turn 2, assistant)" in en
    assert conversations[0][-1]["content"] == "喵~" and conversations[2][0]["content"] == "饿了"
    encoded = encode_conversations(tiny_tokenizer, conversations, 10_000)
    learned = [tiny_tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX]) for row in encoded]
    assert learned == ["喵~<|im_end|>\n", "早喵<|im_end|>\n", "吃小鱼干<|im_end|>\n"]
    with pytest.warns(CourseWarning, match="2 rows had leading/trailing spaces"):
        assert main(["validate", str(path)]) == 0


def test_shipped_sets_have_enough_rows_and_disjoint_splits():
    for lesson in SFT_LESSONS:
        train, held_out = course_conversations(lesson, "train"), course_conversations(lesson, "eval")
        assert len(train) >= 150 and len(held_out) >= 20
        questions = {c[-2]["content"] for c in train}
        assert not questions & {c[-2]["content"] for c in held_out}
    test_rows = read_records(DATA_DIR / "tang" / "Tang_testing_data.json")
    assert len(test_rows) == 15 and all("output" not in r for r in test_rows)


# Prevents: notebook outputs that show the student's (or CI's) file paths in the helpers' warnings.
def test_course_warnings_print_their_message_without_a_file_path(tiny_tokenizer):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        long_question = [{"role": "user", "content": "你好" * 40}, {"role": "assistant", "content": "喵"}]
        encode_conversations(tiny_tokenizer, [long_question] * 2, 8)
    (warning,) = caught
    text = warnings.formatwarning(warning.message, warning.category, warning.filename, warning.lineno)
    assert text.startswith("CourseWarning: 2 条样本超过 8 个 token") and warning.filename not in text
    assert issubclass(warning.category, CourseWarning) and issubclass(warning.category, UserWarning)
    assert "/some/where.py:3: UserWarning" in warnings.formatwarning("m", UserWarning, "/some/where.py", 3)

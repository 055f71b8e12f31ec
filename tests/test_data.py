import json
import subprocess
import sys

import pytest

from helpers.data import (
    DataError,
    alpaca_to_messages,
    course_conversations,
    encode_conversations,
    load_conversations,
    read_records,
    sharegpt_to_messages,
    truncate,
)
from helpers.paths import DATA_DIR
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


def test_truncation_keeps_a_short_response_whole():
    ids = list(range(100))
    labels = [IGNORE_INDEX] * 90 + ids[90:]
    new_ids, new_labels = truncate(ids, labels, 40)
    assert len(new_ids) == 40 and new_ids[-10:] == ids[-10:] and new_labels[-10:] == ids[-10:]
    assert new_ids[:30] == ids[60:90]  # the end of the prompt (the question) is kept


def test_truncation_splits_the_budget_when_the_response_is_long():
    ids = list(range(100))
    labels = [IGNORE_INDEX] * 40 + ids[40:]
    new_ids, new_labels = truncate(ids, labels, 50)
    assert len(new_ids) == 50 and new_labels.count(IGNORE_INDEX) == 20


def test_truncation_is_counted_in_a_warning(tiny_tokenizer):
    conversations = course_conversations("nekoqa", "eval", 4)
    with pytest.warns(UserWarning, match="4 samples truncated to 20"):
        rows = encode_conversations(tiny_tokenizer, conversations, 20)
    assert all(len(r["input_ids"]) == 20 and any(t != IGNORE_INDEX for t in r["labels"]) for r in rows)


def test_json_lines_and_bom_are_read(tmp_path):
    text = '\ufeff{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": "d"}\n'
    lines = write(tmp_path, "a.jsonl", text)
    assert len(read_records(lines)) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[{"instruction": "a", "output": "b"},]', "line 1, column"),
        ("", "empty"),
        ('[{"instruction": "a"}]', "row 1, field 'output': missing"),
        ('[{"instruction": 3, "output": "b"}]', "must be a string"),
        ('[{"instruction": " ", "output": "b"}]', "must not be empty"),
        ('[{"instruction": "a", "output": "b", "history": ["x"]}]', "history"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, text, expected):
    path = write(tmp_path, "bad.json", text)
    with pytest.raises(DataError, match=expected) as failure:
        load_conversations(path)
    assert "bad.json" in str(failure.value)


def test_duplicate_rows_warn(tmp_path):
    row = {"instruction": "a", "output": "b"}
    path = write(tmp_path, "dup.json", json.dumps([row, row]))
    with pytest.warns(UserWarning, match="1 duplicate"):
        load_conversations(path)


def test_validate_command_passes_on_shipped_files_and_fails_on_a_broken_one(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "helpers.data", "validate", *map(str, SHIPPED)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert len(SHIPPED) >= 8 and ok.stdout.count("valid") == len(SHIPPED)
    broken = write(tmp_path, "broken.json", '[{"instruction": "a", "output": "b"}')
    bad = subprocess.run([sys.executable, "-m", "helpers.data", "validate", str(broken)],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "broken.json" in bad.stderr and "line" in bad.stderr


def test_shipped_sets_have_enough_rows_and_disjoint_splits():
    for lesson in ("nekoqa", "tang", "huanhuan"):
        train, held_out = course_conversations(lesson, "train"), course_conversations(lesson, "eval")
        assert len(train) >= 150 and len(held_out) >= 20
        questions = {c[-2]["content"] for c in train}
        assert not questions & {c[-2]["content"] for c in held_out}
    test_rows = read_records(DATA_DIR / "tang" / "Tang_testing_data.json")
    assert len(test_rows) == 15 and all("output" not in r for r in test_rows)

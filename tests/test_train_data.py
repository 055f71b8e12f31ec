"""Your own data set from one command: ``scripts/train.py --data`` and ``python -m helpers.data csv2json``.

One test trains (2 steps, 4 rows, 32 tokens on the tiny profile); the others stop before the model is loaded
(``--dry-run``) or test the data helpers alone, so the file runs in well under a minute.
"""

from __future__ import annotations

import json
import re

import pytest
from script_module import load_script

from helpers.data import DataError, read_records
from helpers.data import main as data_main
from helpers.paths import DATA_DIR
from helpers.splits import own_conversations, split_held_out

SYSTEM = "你是一只猫娘"


train_script = load_script("train")

# Ten NekoQA rows, the first with an earlier turn (Alpaca "history"), written in each schema the command reads.
ALPACA = json.loads((DATA_DIR / "nekoqa" / "train.json").read_text(encoding="utf-8"))[:10]
ALPACA[0] = {**ALPACA[0], "history": [["你好", "主人好喵~"]]}


def turns(row: dict) -> list[tuple[str, str]]:
    """An Alpaca row's (role, text) turns."""
    pairs = [*row.get("history", []), [row["instruction"], row["output"]]]
    return [(role, text) for pair in pairs for role, text in zip(("user", "assistant"), pair, strict=True)]


def as_sharegpt(row: dict) -> dict:
    tags = {"user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": tags[role], "value": text} for role, text in turns(row)]}


def as_messages(row: dict) -> dict:
    return {"messages": [{"role": role, "content": text} for role, text in turns(row)]}


def write_schema(tmp_path, schema: str):
    """The ten rows as Alpaca JSON, ShareGPT JSON or OpenAI-style ``messages`` JSON lines."""
    if schema == "alpaca":
        path = tmp_path / "alpaca.json"
        path.write_text(json.dumps(ALPACA, ensure_ascii=False, indent=1), encoding="utf-8")
    elif schema == "sharegpt":
        path = tmp_path / "sharegpt.json"
        path.write_text(json.dumps([as_sharegpt(row) for row in ALPACA], ensure_ascii=False), encoding="utf-8")
    else:
        path = tmp_path / "messages.jsonl"
        path.write_text("".join(json.dumps(as_messages(row), ensure_ascii=False) + "\n" for row in ALPACA),
                        encoding="utf-8")
    return path


SCHEMAS = ("alpaca", "sharegpt", "messages")
TINY_RUN = ["--profile", "tiny", "--max-steps", "2", "--train-rows", "4", "--cutoff", "32"]


@pytest.mark.slow
def test_own_data_trains_saves_the_adapter_and_reports_held_out_loss(tmp_path, capsys, one_thread):
    # Prevents: --data training without saving, or without the held-out loss before and after that shows it learned.
    data = write_schema(tmp_path, "alpaca")
    assert train_script.main(["--data", str(data), "--output", str(tmp_path / "run"), *TINY_RUN]) == 0
    out = capsys.readouterr().out
    assert "训练 train 4 | 留出 held-out 1" in out  # 10 rows, 10% held out, the first 4 of the rest trained on
    assert "GPU memory estimate" in out
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / ".course-complete").is_file()
    assert list((tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
    found = re.search(r"held-out loss \(1 rows\): 训练前 before (\d+\.\d+) -> 训练后 after (\d+\.\d+)", out)
    assert found, out
    before, after = map(float, found.groups())
    assert 0 < before < 20 and 0 < after < 20 and before != after  # the second step (after warmup) moved the adapter


@pytest.mark.parametrize("schema", SCHEMAS)
def test_each_schema_is_read_split_and_measured_alike(tmp_path, capsys, schema):
    # Prevents: one schema losing rows, turns or the held-out split that another keeps.
    data = write_schema(tmp_path, schema)
    assert train_script.main(["--data", str(data), "--dry-run", "--system", SYSTEM, *TINY_RUN]) == 0
    out = capsys.readouterr().out
    # 4 training rows at 32 tokens: every NekoQA reply alone is longer, so every row is cut.
    assert "训练 train 4 | 留出 held-out 1；" in out and "truncated at the cutoff: 4 / 4 (100%)" in out
    assert "GPU memory estimate" in out and "nothing trained" in out
    assert not (tmp_path / "run").exists()

    train, held_out = own_conversations(data, system=SYSTEM, seed=42)
    (tmp_path / "reference").mkdir()
    reference = own_conversations(write_schema(tmp_path / "reference", "alpaca"), system=SYSTEM, seed=42)
    assert (train, held_out) == reference
    assert [m["role"] for m in train[0]] == ["system", "user", "assistant", "user", "assistant"]
    assert train[0][0]["content"] == SYSTEM and train[0][1]["content"] == "你好"


def test_system_prompt_only_fills_rows_without_one(tmp_path):
    # Prevents: --system overwriting a row's own system turn, or being ignored for ShareGPT / messages rows.
    rows = [{"messages": [{"role": "system", "content": "自带"}, {"role": "user", "content": "q"},
                          {"role": "assistant", "content": "a"}]},
            {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]},
            {"instruction": "q3", "output": "a3", "system": "自带3"}, {"instruction": "q4", "output": "a4"}]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    train, held_out = own_conversations(path, system=SYSTEM, share=0.25)
    systems = {c[-2]["content"]: c[0]["content"] for c in [*train, *held_out]}
    assert systems == {"q": "自带", "q2": SYSTEM, "q3": "自带3", "q4": SYSTEM}


def test_held_out_share_is_seeded_and_keeps_rows_to_train(tmp_path):
    # Prevents: a different held-out set on every run (losses that cannot be compared), or nothing left to train.
    rows = list(range(20))
    train, held_out = split_held_out(rows, 0.1, seed=42)
    assert len(held_out) == 2 and sorted(train + held_out) == rows
    assert split_held_out(rows, 0.1, seed=42) == (train, held_out)
    assert {tuple(split_held_out(rows, 0.1, seed=seed)[1]) for seed in range(5)} != {tuple(held_out)}
    assert len(split_held_out(rows[:3], 0.1, seed=42)[1]) == 1  # at least one row held out
    with pytest.raises(DataError, match="leave nothing to train on"):
        split_held_out(rows[:1], 0.1, seed=42)


def test_held_out_file_is_used_whole_and_its_questions_leave_training(tmp_path, capsys):
    data = write_schema(tmp_path, "alpaca")
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(as_messages(row), ensure_ascii=False) + "\n" for row in ALPACA[3:5]),
                    encoding="utf-8")
    train, held_out = own_conversations(data, held_out_path=held)
    assert len(held_out) == 2 and len(train) == 8
    assert "dropped 2 training rows held out for eval" in capsys.readouterr().out


BAD = {
    "broken-json": '[{"instruction": "a", "output": "b"},]',
    "role-order": json.dumps([{"conversations": [{"from": "gpt", "value": "a"}, {"from": "gpt", "value": "b"}]}]),
    "missing-output": '[{"instruction": "a", "output": "b"}, {"instruction": "c"}]',
}


@pytest.mark.parametrize("case", BAD)
def test_bad_data_stops_with_the_validators_message(tmp_path, capsys, case):
    # Prevents: a traceback deep in tokenizing or training instead of the message `validate` gives for the file.
    path = tmp_path / "bad.json"
    path.write_text(BAD[case], encoding="utf-8")
    assert data_main(["validate", str(path)]) == 1
    expected = capsys.readouterr().err.strip()
    assert train_script.main(["--data", str(path), "--output", str(tmp_path / "run"), "--profile", "tiny"]) == 1
    assert capsys.readouterr().err.strip() == expected
    # the held-out file is checked the same way
    good = write_schema(tmp_path, "sharegpt")
    assert train_script.main(["--data", str(good), "--eval", str(path), "--dry-run", "--profile", "tiny"]) == 1
    assert capsys.readouterr().err.strip() == expected
    assert not (tmp_path / "run").exists()


def test_a_file_too_small_to_hold_out_a_row_is_refused(tmp_path, capsys):
    path = tmp_path / "one_row.json"
    path.write_text('[{"instruction": "a", "output": "b"}]', encoding="utf-8")
    assert train_script.main(["--data", str(path), "--output", str(tmp_path / "run"), "--profile", "tiny"]) == 1
    zh, en = capsys.readouterr().err.strip().split("\n")
    assert "只有 1 行" in zh and "1 rows leave nothing to train on after holding out 1" in en and "--eval" in en


@pytest.mark.parametrize(("argv", "expected"), [
    (["--data", "x.json"], "--data needs --output DIR"),
    (["--lesson", "nekoqa", "--system", "s"], "only with --data"),
    (["--data", "x.json", "--lesson", "nekoqa", "--output", "o"], "not allowed with argument"),
    (["--data", "x.json", "--eval", "e.json", "--eval-share", "0.2", "--output", "o"], "not allowed with argument"),
    (["--data", "x.json", "--eval-share", "10", "--output", "o"], "must be between 0 and 1"),
])
def test_option_mistakes_are_refused_before_anything_loads(capsys, argv, expected):
    with pytest.raises(SystemExit) as exited:
        train_script.parse_args(argv)
    assert exited.value.code == 2 and expected in capsys.readouterr().err


QA_CSV = '问题,回答,备注\n你是谁？,"人家是猫娘喵~\n会陪主人聊天",x\n"饿了, 怎么办",吃小鱼干喵\n'


def test_csv_converts_to_alpaca_that_trains(tmp_path, capsys):
    # Prevents: a spreadsheet (Excel's UTF-8 with BOM, commas and line breaks in cells) needing a hand-written script.
    source = tmp_path / "qa.csv"
    source.write_bytes(QA_CSV.encode("utf-8-sig"))
    target = tmp_path / "out" / "qa.json"
    assert data_main(["csv2json", str(source), str(target)]) == 0  # 问题 / 回答 are default column names
    assert "wrote 2 Alpaca rows" in capsys.readouterr().out
    assert read_records(target) == [
        {"instruction": "你是谁？", "input": "", "output": "人家是猫娘喵~\n会陪主人聊天"},
        {"instruction": "饿了, 怎么办", "input": "", "output": "吃小鱼干喵"},
    ]
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("Q,A\nhi,喵\n", encoding="utf-8")
    assert data_main(["csv2json", str(renamed), str(target), "--question", "Q", "--answer", "A"]) == 0
    assert read_records(target) == [{"instruction": "hi", "input": "", "output": "喵"}]


@pytest.mark.parametrize(("text", "argv", "expected"), [
    ("prompt,reply\na,b\n", [], "no column 'question' / 'instruction' / '问题' in the header (it has: 'prompt', "
                                "'reply'); name the column with --question NAME"),
    ("question,answer\na,b\n", ["--answer", "回答"], "no column '回答' in the header (it has: 'question', 'answer')"),
    ("question,answer\na,b\nc,\n", [], "line 3: column 'answer' is empty"),
    ("question,answer\n", [], "there are no rows under the header"),
    ("问题,回答\n床前明月光,疑是地上霜\n", [], "line 1 is not UTF-8"),
])
def test_csv_mistakes_are_named(tmp_path, capsys, text, argv, expected):
    source = tmp_path / "qa.csv"
    source.write_bytes(text.encode("gbk" if "床" in text else "utf-8"))
    assert data_main(["csv2json", str(source), str(tmp_path / "qa.json"), *argv]) == 1
    zh, en = capsys.readouterr().err.strip().split("\n")
    assert expected in en and any("\u4e00" <= ch <= "\u9fff" for ch in zh)
    assert not (tmp_path / "qa.json").exists()

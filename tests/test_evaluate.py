import json
import math
import subprocess
import sys
import threading
from fractions import Fraction
from http.server import ThreadingHTTPServer
from types import SimpleNamespace

import jieba
import pytest
from fake_http import JSONHandler

from helpers import evaluate
from helpers.evaluate import (
    EvaluateError,
    is_persona,
    is_verse_form,
    judge,
    persona_rate,
    read_predictions,
    score,
    similarity,
    stop_rate,
    stopped_by_itself,
    verse_form_rate,
    write_predictions,
)
from helpers.paths import DATA_DIR

LABEL = "我喜欢吃苹果"


def f1(precision, recall):
    return 2 * precision * recall / (precision + recall) if precision + recall else 0


def bleu4(precisions, hyp_len, ref_len):
    """BLEU-4 by its definition: brevity penalty times the geometric mean of the four n-gram precisions."""
    brevity = 1 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.prod(precisions) ** (1 / 4)


# (predict, label) -> expected scores x100, derived by hand from n-gram counts below.
HAND_SCORED = [
    # identical: every precision and recall is 1
    (LABEL, LABEL, {"bleu-4": 100, "rouge-1": 100, "rouge-2": 100, "rouge-l": 100}),
    # empty answer: nothing matches
    ("", LABEL, {"bleu-4": 0, "rouge-1": 0, "rouge-2": 0, "rouge-l": 0}),
    # words 我|喜欢|吃|香蕉 vs 我|喜欢|吃|苹果: 3 of 4 words, 2 of 3 word pairs, LCS 3 words.
    # characters 我喜欢吃香蕉 vs 我喜欢吃苹果: 1-grams 4/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3, same length.
    ("我喜欢吃香蕉", LABEL, {
        "bleu-4": 100 * bleu4([Fraction(4, 6), Fraction(3, 5), Fraction(2, 4), Fraction(1, 3)], 6, 6),
        "rouge-1": 100 * f1(Fraction(3, 4), Fraction(3, 4)),
        "rouge-2": 100 * f1(Fraction(2, 3), Fraction(2, 3)),
        "rouge-l": 100 * f1(Fraction(3, 4), Fraction(3, 4)),
    }),
    # words 我|喜欢|吃 vs 我|喜欢|吃|苹果: precision 3/3 recall 3/4; pairs 2/2 and 2/3; LCS 3.
    # characters: all four precisions 1, but 4 characters against 6: brevity penalty exp(1 - 6/4).
    ("我喜欢吃", LABEL, {
        "bleu-4": 100 * bleu4([1, 1, 1, 1], 4, 6),
        "rouge-1": 100 * f1(1, Fraction(3, 4)),
        "rouge-2": 100 * f1(1, Fraction(2, 3)),
        "rouge-l": 100 * f1(1, Fraction(3, 4)),
    }),
    # a right two-character answer: no 3- or 4-grams, which method3 smooths to 1/2 and 1/4 (BLEU 59.46, not 100);
    # one word has no word pairs, so ROUGE-2 is 0.
    ("苹果", "苹果", {
        "bleu-4": 100 * bleu4([1, 1, Fraction(1, 2), Fraction(1, 4)], 2, 2),
        "rouge-1": 100, "rouge-2": 0, "rouge-l": 100,
    }),
]


def hand_scored_file(tmp_path):
    records = [{"prompt": f"问题{i}", "predict": predict, "label": label}
               for i, (predict, label, _) in enumerate(HAND_SCORED)]
    return write_predictions(tmp_path / "generated_predictions.jsonl", records)


def expected_mean():
    return {key: sum(float(expected[key]) for *_, expected in HAND_SCORED) / len(HAND_SCORED)
            for key in evaluate.METRICS}


# Prevents: hand arithmetic resting on a word split jieba does not make (the ROUGE numbers would be meaningless).
def test_jieba_splits_the_hand_scored_sentences_as_assumed():
    assert list(jieba.cut("我喜欢吃苹果")) == ["我", "喜欢", "吃", "苹果"]
    assert list(jieba.cut("我喜欢吃香蕉")) == ["我", "喜欢", "吃", "香蕉"]
    assert list(jieba.cut("我喜欢吃")) == ["我", "喜欢", "吃"]
    assert list(jieba.cut("苹果")) == ["苹果"]


# Prevents: course scores that differ from what LLaMA-Factory reports for the same predictions.
@pytest.mark.parametrize(("predict", "label", "expected"), HAND_SCORED,
                         ids=["same", "empty", "banana", "short", "2char"])
def test_each_sample_matches_the_hand_computed_scores(predict, label, expected):
    scores = similarity(predict, label)
    assert set(scores) == set(evaluate.METRICS)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(float(value), abs=1e-4), key


# Prevents: a file's scores averaged or rounded differently from LLaMA-Factory's ComputeSimilarity.
def test_file_scores_are_the_mean_of_the_samples(tmp_path):
    scores = score(read_predictions(hand_scored_file(tmp_path)))
    assert scores == pytest.approx(expected_mean(), abs=1e-4)
    assert all(round(value, 4) == value for value in scores.values())


# Prevents: files the course writes that LLaMA-Factory cannot read, or the other way round.
def test_predictions_round_trip_in_llamafactory_format(tmp_path):
    path = write_predictions(tmp_path / "out" / "p.jsonl", [{"prompt": "床前明月光，", "predict": "疑", "label": "霜"}])
    assert path.read_text(encoding="utf-8") == '{"prompt": "床前明月光，", "predict": "疑", "label": "霜"}\n'
    llamafactory_line = '{"prompt": "user\\n你好", "predict": "喵~", "label": "主人好喵"}\n\n'
    (tmp_path / "lf.jsonl").write_text(llamafactory_line, encoding="utf-8")
    assert read_predictions(tmp_path / "lf.jsonl") == [{"prompt": "user\n你好", "predict": "喵~", "label": "主人好喵"}]


# Prevents: `python -m helpers.evaluate score` failing or printing something that is not JSON.
@pytest.mark.slow
def test_cli_prints_json_for_one_and_several_files(tmp_path):
    path = hand_scored_file(tmp_path)
    one = subprocess.run([sys.executable, "-m", "helpers.evaluate", "score", str(path)],
                         capture_output=True, text=True, encoding="utf-8")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout) == pytest.approx(expected_mean(), abs=1e-4)
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(path.read_bytes())
    assert evaluate.main(["score", str(path), str(copy)]) == 0


# Prevents: a broken predictions file giving a traceback (or a score) instead of the file and line to fix.
@pytest.mark.parametrize(("line", "expected"), [
    ('{"predict": "a", "label": ', ":2: column"),
    ('{"prompt": "p", "label": "b"}', ":2: field 'predict' missing"),
    ('{"predict": 3, "label": "b"}', ":2: field 'predict' must be a string"),
    ('["a", "b"]', ":2: must be a JSON object"),
])
def test_cli_names_file_and_line_of_a_bad_record(tmp_path, capsys, line, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "predict": "a", "label": "b"}\n' + line + "\n", encoding="utf-8")
    assert evaluate.main(["score", str(path)]) == 1
    message = capsys.readouterr().err
    assert f"{path}{expected}" in message and f"{path} 第 2 行" in message


# Prevents: the command exiting 0 on a broken file, so a script chaining it goes on with no scores.
def test_cli_exit_code_is_nonzero_on_a_bad_file(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "label": "b"}\n', encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "helpers.evaluate", "score", str(path)],
                            capture_output=True, text=True, encoding="utf-8")
    assert result.returncode == 1 and f"{path}:1" in result.stderr and not result.stdout


# Prevents: counting a reply as in persona when it is not (or missing 主人 / 喵 replies).
def test_persona_share():
    replies = ["好的喵~", "主人早上好！", "我是一个 AI 助手。", "今天天气很好。"]
    assert [is_persona(reply) for reply in replies] == [True, True, False, False]
    assert persona_rate(replies) == 0.5
    assert persona_rate([]) == 0.0


JINGYESI = "疑是地上霜。举头望明月，低头思故乡。"  # 李白《静夜思》, after the given 床前明月光，


# Prevents: judging a correct Tang continuation malformed, or a malformed one correct.
@pytest.mark.parametrize(("text", "given_lines", "ok"), [
    (JINGYESI, 1, True),
    ("疑是地上霜\n举头望明月\n低头思故乡\n", 1, True),  # newlines instead of punctuation
    ("咸陽遊俠多少年。相逢意氣為君飲，繫馬高樓垂柳邊。", 1, True),  # 王維《少年行》, 7 characters, traditional
    ("床前明月光，" + JINGYESI, 0, True),  # a whole poem when nothing is given
    (JINGYESI, 0, False),  # three lines are not a whole poem
    ("疑是地上霜。举头望明月。", 1, False),  # one line missing: 1 + 2 lines is odd
    ("疑是地上霜。举头望明月，低头思故乡啊。", 1, False),  # 6 characters
    ("疑是地上霜。举头望明月，相逢意氣為君飲。", 1, False),  # 5 and 7 mixed
    (JINGYESI + "这首诗是李白写的。", 1, False),  # chatter after the poem
    ("Moon on the floor, frost.", 1, False),
    ("", 1, False),
])
def test_verse_form(text, given_lines, ok):
    assert is_verse_form(text, given_lines) is ok


# Prevents: a rule so strict that the shipped reference answers themselves fail it.
def test_shipped_tang_answers_have_verse_form():
    rows = json.loads((DATA_DIR / "tang" / "Tang_eval_data.json").read_text(encoding="utf-8"))
    assert verse_form_rate(row["output"] for row in rows) == 1.0
    assert verse_form_rate((row["input"] + row["output"] for row in rows), given_lines=0) == 1.0


# Prevents: reading a reply cut off at max_new_tokens as one the model finished.
def test_stopped_by_itself():
    eos = {2, 3}
    assert stopped_by_itself([5, 6, 2, 0, 0], eos, max_new_tokens=5)  # eos, then padding
    assert stopped_by_itself([5, 6, 7, 3], eos, max_new_tokens=4)  # eos as the very last allowed token
    assert stopped_by_itself([5, 6], eos, max_new_tokens=5)  # eos already stripped, ended early
    assert not stopped_by_itself([5, 6, 7, 8], eos, max_new_tokens=4)  # hit the limit
    assert stop_rate([[5, 2], [5, 6, 7, 8]], eos, max_new_tokens=4) == 0.5


@pytest.fixture
def fake_judge():
    """A local OpenAI-compatible endpoint: records each request and answers with ``server.reply``."""
    seen = []

    class Handler(JSONHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "auth": self.headers["Authorization"], "body": body})
            if server.status == 200:
                payload = {"choices": [{"message": {"role": "assistant", "content": server.reply}}]}
            else:  # a careless server that echoes the key back
                payload = {"error": {"message": f"Incorrect API key: {self.headers['Authorization']}"}}
            self.send_json(server.status, payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.status, server.reply = 200, "评分：4 分"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield SimpleNamespace(server=server, seen=seen, url=f"http://127.0.0.1:{server.server_port}/v1")
    server.shutdown()
    server.server_close()


RECORD = {"prompt": "你是谁？", "predict": "我是猫娘喵~", "label": "人家是主人的猫娘喵~"}


# Prevents: a judge call that does not authenticate or misreads the reply.
def test_judge_sends_the_key_and_reads_the_score(fake_judge, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("OPENAI_BASE_URL", fake_judge.url)
    assert judge([RECORD, RECORD], model="grader") == [4, 4]
    request = fake_judge.seen[0]
    assert request["auth"] == "Bearer sk-test-secret"
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "grader" and RECORD["predict"] in request["body"]["messages"][1]["content"]


# Prevents: a student's API key printed in a notebook error (and shared with the notebook).
def test_judge_error_never_shows_the_key(fake_judge, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-very-secret-123")
    fake_judge.server.status = 401
    with pytest.raises(EvaluateError) as caught:
        judge([RECORD], model="grader", base_url=fake_judge.url, api_key_env="JUDGE_KEY")
    assert fake_judge.seen[0]["auth"] == "Bearer sk-very-secret-123"  # the server did receive (and echo) it
    error = caught.value
    assert "401" in str(error) and "***" in str(error)
    assert "sk-very-secret-123" not in str(error) + repr(error)
    assert error.__cause__ is None and error.__context__ is None


# Prevents: a vague failure when no key is set, instead of naming the variable to set.
def test_judge_without_a_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    monkeypatch.setattr(evaluate, "_interactive", lambda: False)
    with pytest.raises(EvaluateError, match="MY_JUDGE_KEY"):
        judge([RECORD], model="grader", base_url="http://127.0.0.1:9", api_key_env="MY_JUDGE_KEY")


# Prevents: a reply with other numbers in it (10 分制) misread, or a reply without a score counted as one.
def test_judge_takes_the_first_score_in_range_and_rejects_replies_without_one(fake_judge, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    fake_judge.server.reply = "10 分制不适用；得分 3。"
    assert judge([RECORD], model="grader", base_url=fake_judge.url) == [3]
    fake_judge.server.reply = "无法评分"
    with pytest.raises(EvaluateError, match="no score 0-5"):
        judge([RECORD], model="grader", base_url=fake_judge.url)


# Prevents: a Tang homework submission the NTU GenAI HW5 grader cannot read (one numbered line per test poem).
def test_tang_results_file_has_one_numbered_line_per_test_poem(tmp_path):
    rows = json.loads((DATA_DIR / "tang" / "Tang_testing_data.json").read_text(encoding="utf-8"))
    poems = [f"第{i}首續寫，\n第二句。" if i % 2 else f" 續寫 {i} " for i in range(len(rows))]
    path = evaluate.write_tang_results(tmp_path / "results.txt", rows, poems)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(rows) == 15
    assert lines[0] == f"1. {rows[0]['input']}續寫0"
    assert lines[1] == f"2. {rows[1]['input']}第1首續寫，第二句。"
    numbered = zip(range(1, len(rows) + 1), lines[:-1], rows, strict=True)
    assert all(line.startswith(f"{number}. {row['input']}") for number, line, row in numbered)
    with pytest.raises(ValueError):
        evaluate.write_tang_results(tmp_path / "short.txt", rows, poems[:-1])

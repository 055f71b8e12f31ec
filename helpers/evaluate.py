"""Scoring generations: LLaMA-Factory's BLEU-4 / ROUGE, simple task checks, and an optional LLM judge.

Predictions use LLaMA-Factory's ``generated_predictions.jsonl`` format (one ``{"prompt", "predict", "label"}``
object a line), so the course and LLaMA-Factory can score each other's files; ``label`` is, in both, the reference
reply decoded through its end of turn without special tokens (ChatML keeps the newline after ``<|im_end|>``,
``helpers.templates.reply_label``), so the same replies get the same scores. Also a command:
``python -m helpers.evaluate score FILE.jsonl [FILE2 ...]`` prints the metrics as JSON (exit 1 on bad input).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import jieba
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

jieba.setLogLevel(logging.CRITICAL)  # no "Building prefix dict ..." chatter in the notebooks

METRICS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")  # LLaMA-Factory's names (its files add "predict_")
FIELDS = ("prompt", "predict", "label")
JUDGE_TIMEOUT_S = 60
DEFAULT_RUBRIC = (
    "你是严格的评分员：对照问题和参考答案，给模型回答打 0-5 的整数分（5 最好），只回复这个数字。\n"
    "You are a strict grader: compare the model's answer with the question and the reference, "
    "score it with one integer from 0 to 5 (5 is best) and reply with that number only."
)


class EvaluateError(ValueError):
    """A predictions file, record or judge call the course cannot use; the message says what to fix."""


def _check_record(record: object, path: str, number: int) -> dict[str, str]:
    """The three fields of one prediction (``prompt`` may be missing), or an error naming file, line and field."""
    if not isinstance(record, dict):
        raise EvaluateError(f"{path} 第 {number} 行应是 JSON 对象\n{path}:{number}: must be a JSON object")
    checked = {}
    for field in FIELDS:
        value = record.get(field, "" if field == "prompt" else None)
        if not isinstance(value, str):
            problem_zh, problem_en = (("缺少该字段", "missing") if field not in record else
                                      (f"应为字符串，实际是 {type(value).__name__}",
                                       f"must be a string, got {type(value).__name__}"))
            raise EvaluateError(f"{path} 第 {number} 行，字段 {field!r}：{problem_zh}\n"
                                f"{path}:{number}: field {field!r} {problem_en}")
        checked[field] = value
    return checked


def read_predictions(path: str | Path) -> list[dict[str, str]]:
    """Read a ``generated_predictions.jsonl`` file (LLaMA-Factory's or ours); blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise EvaluateError(f"找不到预测文件 {path} / predictions file not found: {path}")
    records = []
    with path.open(encoding="utf-8-sig") as lines:  # iterating a file splits on newlines only
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise EvaluateError(
                    f"{path} 第 {number} 行第 {error.colno} 列不是合法的 JSON（{error.msg}）\n"
                    f"{path}:{number}: column {error.colno} is not valid JSON ({error.msg})"
                ) from None
            records.append(_check_record(row, str(path), number))
    if not records:
        raise EvaluateError(f"{path}: 文件里没有预测 / the file holds no predictions")
    return records


def write_predictions(path: str | Path, records: Iterable[dict]) -> Path:
    """Write records as ``{"prompt", "predict", "label"}`` JSON lines in UTF-8 (not escaped), like LLaMA-Factory."""
    rows = [_check_record(record, "<records>", number) for number, record in enumerate(records, start=1)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8",
                    newline="\n")
    return path


def write_tang_results(path: str | Path, rows: Iterable[dict], poems: Iterable[str]) -> Path:
    """The NTU GenAI 2024 HW5 submission file: line N is ``N. <first line><the model's continuation>``."""
    lines = [f"{number}. {row['input']}{''.join(poem.split())}"  # one poem per line: no spaces or line breaks
             for number, (row, poem) in enumerate(zip(rows, poems, strict=True), start=1)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    return path


def similarity(predict: str, label: str) -> dict[str, float]:
    """One sample as LLaMA-Factory scores it: BLEU-4 over characters, ROUGE F over jieba words, x100, 4 places."""
    hypothesis, reference = " ".join(jieba.cut(predict)), " ".join(jieba.cut(label))
    if not hypothesis.split() or not reference.split():
        rouge = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    else:
        result = Rouge().get_scores(hypothesis, reference)[0]
        rouge = {key: result[key]["f"] for key in ("rouge-1", "rouge-2", "rouge-l")}
    bleu = sentence_bleu([list(label)], list(predict), smoothing_function=SmoothingFunction().method3)
    return {key: round(value * 100, 4) for key, value in {"bleu-4": bleu, **rouge}.items()}


def score(records: list[dict]) -> dict[str, float]:
    """Mean ``bleu-4``, ``rouge-1``, ``rouge-2``, ``rouge-l`` over records (samples rounded first, as LLaMA-Factory)."""
    if not records:
        raise EvaluateError("没有可评分的预测 / no predictions to score")
    samples = [similarity(record["predict"], record["label"]) for record in records]
    return {key: round(sum(sample[key] for sample in samples) / len(samples), 4) for key in METRICS}


def share(flags: Iterable[bool]) -> float:
    """The share of True values in [0, 1] (0.0 for an empty list)."""
    flags = list(flags)
    return sum(map(bool, flags)) / len(flags) if flags else 0.0


def is_persona(text: str) -> bool:
    """NekoQA's cat-girl voice: the answer says 主人 or 喵."""
    return "主人" in text or "喵" in text


def persona_rate(predictions: Iterable[str]) -> float:
    return share(map(is_persona, predictions))


_VERSE_BREAK = re.compile(r"[，。！？；、,.!?;\n]")
_HAN_ONLY = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def verse_lines(text: str) -> list[str]:
    """The lines of a poem: pieces between ，。！？；、,.!?; and newlines, stripped, empty ones dropped."""
    return [piece.strip() for piece in _VERSE_BREAK.split(text) if piece.strip()]


def is_verse_form(text: str, given_lines: int = 1) -> bool:
    """A well-formed 五言/七言 continuation: the form of a Tang poem, not its quality.

    Every line (see ``verse_lines``) is made of Chinese characters only, 5 or 7 of them, all lines the same
    length, and the number of lines plus ``given_lines`` is even: HW5 gives the first line in the prompt
    (``given_lines=1``), so a good continuation has an odd number of lines; use 0 to check whole poems.
    The given lines themselves are not seen here, so their length is not compared.
    """
    lines = verse_lines(text)
    lengths = {len(line) for line in lines}
    return (bool(lines) and all(_HAN_ONLY.fullmatch(line) for line in lines)
            and len(lengths) == 1 and lengths <= {5, 7} and (len(lines) + given_lines) % 2 == 0)


def verse_form_rate(predictions: Iterable[str], given_lines: int = 1) -> float:
    return share(is_verse_form(text, given_lines) for text in predictions)


def stopped_by_itself(new_token_ids: list[int], eos_ids: set[int], max_new_tokens: int) -> bool:
    """True when the model ended its turn (an eos id among the new tokens, or fewer than the limit generated)."""
    return any(token in eos_ids for token in new_token_ids) or len(new_token_ids) < max_new_tokens


def stop_rate(generations: Iterable[list[int]], eos_ids: set[int], max_new_tokens: int) -> float:
    return share(stopped_by_itself(ids, eos_ids, max_new_tokens) for ids in generations)


def _interactive() -> bool:
    return bool(sys.stdin and sys.stdin.isatty()) or "ipykernel" in sys.modules


def _api_key(env: str) -> str:
    """The judge's key from ``$env`` (or typed in, unechoed, when interactive); never printed."""
    key = os.environ.get(env, "").strip()
    if not key and _interactive():
        key = getpass.getpass(f"{env}（输入不会显示 / not echoed）: ").strip()
    if not key:
        raise EvaluateError(f"没有评分模型的 API key：请设置环境变量 {env}\n"
                            f"no API key for the judge: set the environment variable {env}")
    return key


def _chat(url: str, model: str, messages: list[dict], key: str) -> str:
    """One ``/chat/completions`` call; errors carry the server's words with the key blanked out."""
    body = json.dumps({"model": model, "messages": messages, "temperature": 0}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=JUDGE_TIMEOUT_S) as response:
            return json.load(response)["choices"][0]["message"]["content"] or ""
    except urllib.error.HTTPError as error:
        detail = f"HTTP {error.code}: {error.read().decode('utf-8', 'replace')[:300]}"
    except OSError as error:  # refused, unreachable, timed out
        detail = f"{type(error).__name__}: {error}"
    except (ValueError, KeyError, IndexError, TypeError) as error:
        detail = f"unexpected reply ({type(error).__name__}: {error})"
    # raised outside the except blocks: no chained exception (which holds the request) in the traceback
    raise EvaluateError(f"评分接口调用失败 / judge request to {url} failed: {detail}".replace(key, "***"))


def judge(records: Iterable[dict], model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
          rubric: str = DEFAULT_RUBRIC) -> list[int]:
    """Score each record 0-5 with an LLM behind an OpenAI-compatible endpoint (optional; needs a key)."""
    key = _api_key(api_key_env)
    base = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    url = base.rstrip("/") + "/chat/completions"
    scores = []
    for number, record in enumerate(records, start=1):
        question = (f"问题 / Question:\n{record.get('prompt', '')}\n\n参考答案 / Reference:\n{record['label']}\n\n"
                    f"模型回答 / Answer:\n{record['predict']}")
        reply = _chat(url, model, [{"role": "system", "content": rubric}, {"role": "user", "content": question}], key)
        found = re.search(r"(?<!\d)[0-5](?!\d)", reply)
        if found is None:
            raise EvaluateError(f"第 {number} 条的评分回复里没有 0-5 的分数 / reply {number} holds no score 0-5: "
                                f"{reply[:200]!r}".replace(key, "***"))
        scores.append(int(found.group()))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.evaluate")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("score", help="BLEU-4 / ROUGE of generated_predictions.jsonl files / 计算指标")
    run.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        results = {str(file): score(read_predictions(file)) for file in args.files}
    except EvaluateError as error:
        print(error, file=sys.stderr)
        return 1
    print(json.dumps(results if len(args.files) > 1 else results[str(args.files[0])], ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# Lesson 07's simple check that fits a data set, by the name helpers.registry gives it: persona words, the verse form.
TASK_CHECKS: dict[str, Callable[[Iterable[str]], float]] = {"persona": persona_rate, "verse_form": verse_form_rate}

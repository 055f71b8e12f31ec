"""``make check-llamafactory``: the course's LLaMA-Factory export checked against LLaMA-Factory 0.9.5 itself.

Opt-in, not part of ``make test`` (it installs LLaMA-Factory and trains; see the README for its time). It

1. builds ``.venv-llamafactory/`` beside the course (reused once complete): LLaMA-Factory's pins exclude the course's
   transformers / trl / peft / datasets, so it cannot share the course's environment;
2. exports the three lessons with ``helpers.llamafactory`` (tiny profile) into ``outputs/llamafactory/check/``;
3. runs LLaMA-Factory's argument parser on every exported YAML;
4. tokenises every training row with LLaMA-Factory's own pipeline (template, loader, supervised processor) and
   compares ``input_ids`` and ``labels`` row by row with the course's encoder, at the YAML's cutoff and at a short
   one that cuts nearly every row, in alpaca and sharegpt form, and on multi-turn rows;
5. trains 3 steps with ``llamafactory-cli train`` on an exported YAML, predicts a few held-out rows, and scores
   LLaMA-Factory's ``generated_predictions.jsonl`` with ``helpers.evaluate`` against its ``predict_results.json``.

Exit status 1 on any mismatch. The LLaMA-Factory half runs in ``scripts/llamafactory_side.py``.

    python scripts/check_llamafactory.py [--lesson nekoqa] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import venv
import warnings
from collections.abc import Callable
from pathlib import Path

from packaging.requirements import Requirement

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without `pip install -e .`

from helpers.encoding import encode_conversations
from helpers.evaluate import METRICS, read_predictions, score
from helpers.hub_data import course_conversations
from helpers.lessons import encoded_split
from helpers.llamafactory import alpaca_row, dataset_entry, export, register
from helpers.messages import CourseWarning
from helpers.paths import REPO_ROOT, display_path, is_complete, mark_complete
from helpers.profiles import get_profile
from helpers.registry import SFT_LESSONS
from helpers.templates import reply_label
from helpers.tiny_model import ensure_tiny_model

VENV = REPO_ROOT / ".venv-llamafactory"
LLAMAFACTORY = "llamafactory==0.9.5"
SIDE = Path(__file__).resolve().parent / "llamafactory_side.py"
WORK = REPO_ROOT / "outputs" / "llamafactory" / "check"
# LLaMA-Factory's declared dependencies that are not installed: torch comes pinned first (the course's CPU build);
# torchaudio and torchvision have no build that works beside it (PyPI's fail with the local CPU wheel).
NOT_FROM_LLAMAFACTORY = {"torch", "torchaudio", "torchvision"}
# Not in LLaMA-Factory's core dependencies, needed here: 4-bit loading and its BLEU / ROUGE; the course's pins.
FROM_COURSE = ("bitsandbytes", "jieba", "nltk", "rouge-chinese")
# llamafactory/data/mm_plugin.py runs `import torchaudio` at import time (it only calls torchaudio.load and
# torchaudio.functional.resample on audio inputs), so `llamafactory-cli train` fails without the package, and no
# torchaudio build works with the course's CPU torch. This stand-in satisfies the import; the course's data has no
# audio, and any use fails loudly. It has no dist-info, so pip and transformers still see torchaudio as missing.
TORCHAUDIO_STUB = '''"""Stand-in for torchaudio, written by scripts/check_llamafactory.py: not the real package."""


def __getattr__(name):
    raise AttributeError(
        f"torchaudio.{name}: 这是课程为 LLaMA-Factory 写的占位模块，不能处理音频 / "
        "a stand-in written by the course for LLaMA-Factory's import; it cannot process audio"
    )
'''
TRAIN_STEPS = 3
PREDICT_ROWS = 4
SHORT_CUTOFF = 48  # a second encoding pass where nearly every row is cut
MULTITURN_CUTOFF = 160  # three huanhuan rows in one conversation: later turns are cut or dropped
METRIC_TOLERANCE = 0.01
TINY = get_profile("tiny")


class CheckFailed(RuntimeError):
    """A step of the check failed; the message says which and why."""


def course_pins() -> dict[str, str]:
    """``name -> name==version`` from requirements.txt, the course's one list of versions."""
    lines = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return {line.split("==")[0].lower(): line.strip() for line in lines if "==" in line and not line.startswith("#")}


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def run(command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Run a command with its output in ``log``; CheckFailed with the log's last lines when it fails."""
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    if done.returncode:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        raise CheckFailed(f"命令失败 / command failed ({done.returncode}): {' '.join(command)}\n{tail}")


def venv_output(code: str, venv: Path = VENV) -> str:
    """What ``code`` prints in a LLaMA-Factory venv; CheckFailed with its error output when it fails."""
    done = subprocess.run([str(venv_python(venv)), "-c", code], capture_output=True, text=True, check=False,
                          env=llamafactory_env())
    if done.returncode:
        raise CheckFailed(f"{venv.name}: {code}\n{done.stderr[-3000:]}")
    return done.stdout


def wanted_requirements(declared: list[str]) -> list[str]:
    """LLaMA-Factory's declared requirements to install: not its extras, not torch / torchaudio / torchvision."""
    return [str(req) for req in map(Requirement, declared)
            if req.marker is None and req.name.lower() not in NOT_FROM_LLAMAFACTORY]


def ensure_venv(rebuild: bool = False) -> None:
    """``.venv-llamafactory`` with LLaMA-Factory 0.9.5 on the course's CPU torch; reused once complete."""
    if is_complete(VENV) and not rebuild:
        print(f"[venv] 复用 / reusing {display_path(VENV)}")
        return
    shutil.rmtree(VENV, ignore_errors=True)
    print(f"[venv] 创建 / creating {display_path(VENV)} ({LLAMAFACTORY}, 需要几分钟 / takes minutes)")
    venv.create(VENV, with_pip=True)
    pins = course_pins()
    pip = pip_install(VENV, [pins["torch"]])  # holds torch: no dependency may swap in a CUDA build
    run([*pip, pins["torch"]], VENV / "install-torch.log")
    install_llamafactory(VENV, pip, [pins[name] for name in FROM_COURSE])
    mark_complete(VENV)


def pip_install(venv: Path, held: list[str]) -> list[str]:
    """``pip install`` in ``venv`` under a constraint file that holds ``held`` (``name==version`` lines)."""
    constraints = venv / "constraints.txt"
    constraints.write_text("".join(f"{line}\n" for line in held), encoding="utf-8")
    return [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-c", str(constraints)]


def install_llamafactory(venv: Path, pip: list[str], extra: list[str]) -> None:
    """LLaMA-Factory 0.9.5 and its declared requirements but torch / torchaudio / torchvision, plus ``extra``.

    A torchaudio that cannot be imported (none, or no build for this torch) is replaced by the stand-in.
    """
    # --no-deps: its torchaudio / torchvision requirements cannot be met; pip's warning about them is expected
    run([*pip, "--no-deps", LLAMAFACTORY], venv / "install-llamafactory.log")
    declared = json.loads(venv_output("import importlib.metadata as m, json; print(json.dumps(m.requires("
                                      "'llamafactory') or []))", venv))
    run([*pip, *wanted_requirements(declared), *extra], venv / "install-deps.log")
    try:
        venv_output("import torchaudio", venv)
    except CheckFailed:
        site = Path(venv_output("import sysconfig; print(sysconfig.get_paths()['purelib'])", venv).strip())
        (site / "torchaudio").mkdir(exist_ok=True)
        (site / "torchaudio" / "__init__.py").write_text(TORCHAUDIO_STUB, encoding="utf-8")
    venv_output("import llamafactory.data, llamafactory.train.tuner", venv)  # fails here, not in a later step


def llamafactory_env() -> dict[str, str]:
    """Offline, with LLaMA-Factory's data cache in the check's folder and none of the course on its path."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(WORK / "hf-datasets"),
            "PYTHONUNBUFFERED": "1"}


def side(command: str, request: object, venv: Path = VENV) -> object:
    """Run ``llamafactory_side.py command`` in a LLaMA-Factory venv and return its JSON answer."""
    request_path, answer_path = WORK / f"{command}-request.json", WORK / f"{command}-answer.json"
    request_path.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
    answer_path.unlink(missing_ok=True)
    try:
        run([str(venv_python(venv)), str(SIDE), command, str(request_path), str(answer_path)], WORK / f"{command}.log",
            llamafactory_env())
    except CheckFailed:
        if not answer_path.is_file():
            raise
    answer = json.loads(answer_path.read_text(encoding="utf-8"))
    if isinstance(answer, dict) and "error" in answer:
        raise CheckFailed(f"LLaMA-Factory ({command}):\n{answer['error']}")
    return answer


def export_all() -> dict[str, dict[str, Path]]:
    """The three lessons in alpaca form (and sharegpt, in a second folder), plus multi-turn huanhuan rows."""
    written = {lesson: export(lesson, WORK / "data", "alpaca", TINY) for lesson in SFT_LESSONS}
    for lesson in SFT_LESSONS:
        export(lesson, WORK / "sharegpt", "sharegpt", TINY)
    (WORK / "data" / "course_multiturn.json").write_text(
        json.dumps([alpaca_row(c) for c in multiturn_conversations()], ensure_ascii=False, indent=2),
        encoding="utf-8")
    register(WORK / "data", {"course_multiturn": dataset_entry("course_multiturn.json", "alpaca")})
    return written


def multiturn_conversations() -> list[list[dict]]:
    """Three consecutive huanhuan rows as one conversation (system prompt once): LLaMA-Factory's turn-by-turn cut."""
    rows = course_conversations("huanhuan", "train", profile=TINY)
    return [[*rows[i], *rows[i + 1][1:], *rows[i + 2][1:]] for i in range(0, len(rows) - 2, 3)]


def check_parse(written: dict[str, dict[str, Path]], venv: Path = VENV) -> str:
    """Every exported YAML through LLaMA-Factory's parser (train for sft/predict, infer for chat/merge)."""
    request = {"train": [str(paths[kind]) for paths in written.values() for kind in ("sft", "predict")],
               "infer": [str(paths[kind]) for paths in written.values() for kind in ("infer", "merge")]}
    results = side("parse", request, venv)
    failed = {path: result for path, result in results.items() if result != "ok"}
    if failed:
        raise CheckFailed("\n".join(f"{display_path(path)}: {result}" for path, result in failed.items()))
    return f"{len(results)} 个 YAML 全部通过 / all {len(results)} YAMLs parse"


def show_tokens(tokenizer, ids: list[int], labels: list[int], at: int) -> str:
    """Tokens around position ``at``: id, label and text of each."""
    window = range(max(0, at - 6), min(len(ids), at + 6))
    return " ".join(f"{'>' if i == at else ''}{ids[i]}/{labels[i]}{tokenizer.decode([ids[i]])!r}" for i in window)


def first_difference(tokenizer, name: str, ours: list[dict], theirs: dict) -> str | None:
    """None when LLaMA-Factory's rows equal the course's; else the first differing row, decoded around the spot."""
    if len(ours) != len(theirs["input_ids"]):
        return f"{name}: 课程 {len(ours)} 行 / course rows, LLaMA-Factory {len(theirs['input_ids'])}"
    for number, (row, ids, labels) in enumerate(zip(ours, theirs["input_ids"], theirs["labels"], strict=True)):
        if row["input_ids"] == ids and row["labels"] == labels:
            continue
        pairs = zip(row["input_ids"], row["labels"], ids, labels, strict=False)
        at = next((i for i, (a, b, c, d) in enumerate(pairs) if (a, b) != (c, d)), min(len(ids), len(row["input_ids"])))
        return (f"{name} 第 {number} 行不同 / row {number} differs at token {at} "
                f"(course {len(row['input_ids'])} tokens, LLaMA-Factory {len(ids)})\n"
                f"  course:        {show_tokens(tokenizer, row['input_ids'], row['labels'], at)}\n"
                f"  LLaMA-Factory: {show_tokens(tokenizer, ids, labels, at)}\n"
                f"  course row:        {tokenizer.decode(row['input_ids'])!r}\n"
                f"  LLaMA-Factory row: {tokenizer.decode(ids)!r}")
    return None


def check_encoding(written: dict[str, dict[str, Path]], tokenizer) -> str:
    """LLaMA-Factory's input_ids and labels equal the course's, row by row, in every form and at both cutoffs."""
    base = {"overwrite_cache": True, "output_dir": str(WORK / "encode")}
    cases: list[tuple[str, Path, dict, Callable[[], list[dict]]]] = []
    for lesson, paths in written.items():
        cutoff = TINY.recipe(lesson).cutoff
        conversations = course_conversations(lesson, "train", profile=TINY)
        cases += [
            (f"{lesson} alpaca cutoff {cutoff}", paths["sft"], {},
             lambda lesson=lesson: encoded_split(lesson, "train", tokenizer, TINY)),
            (f"{lesson} sharegpt cutoff {cutoff}", paths["sft"], {"dataset_dir": str(WORK / "sharegpt")},
             lambda lesson=lesson: encoded_split(lesson, "train", tokenizer, TINY)),
            (f"{lesson} alpaca cutoff {SHORT_CUTOFF}", paths["sft"], {"cutoff_len": SHORT_CUTOFF},
             lambda c=conversations: encode_conversations(tokenizer, c, SHORT_CUTOFF)),
        ]
    cases.append((f"huanhuan multi-turn cutoff {MULTITURN_CUTOFF}", written["huanhuan"]["sft"],
                  {"dataset": "course_multiturn", "cutoff_len": MULTITURN_CUTOFF},
                  lambda: encode_conversations(tokenizer, multiturn_conversations(), MULTITURN_CUTOFF)))
    answers = side("encode", [{"yaml": str(path), "overrides": {**base, **overrides}}
                              for _, path, overrides, _ in cases])
    problems, lines = [], []
    for (name, _, overrides, ours), theirs in zip(cases, answers, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CourseWarning)  # the truncation count: expected here
            rows = ours()
        cutoff = overrides.get("cutoff_len", TINY.recipe("nekoqa").cutoff)
        at_cutoff = sum(len(row["input_ids"]) == cutoff for row in rows)
        difference = first_difference(tokenizer, name, rows, theirs)
        lines.append(f"  {name:<36} {len(rows):>4} 行 rows, {at_cutoff:>4} 行达到截断长度 at the cutoff: "
                     f"{'相同 / equal' if difference is None else '不同 / DIFFERENT'}")
        if difference:
            problems.append(difference)
    print("\n".join(lines))
    if problems:
        raise CheckFailed("\n".join(problems))
    return f"{len(cases)} 组全部相同 / all {len(cases)} sets equal, {sum(len(a['input_ids']) for a in answers)} rows"


def llamafactory_cli(*args: str, log: Path, venv: Path = VENV) -> None:
    run([str(venv / "bin" / "llamafactory-cli"), *args], log, llamafactory_env())


def check_train_and_predict(written: dict[str, dict[str, Path]], lesson: str, tokenizer) -> str:
    """3 steps of ``llamafactory-cli train`` on the exported YAML, then a prediction scored by both sides."""
    sft_dir, predict_dir = WORK / f"{lesson}-sft", WORK / f"{lesson}-predict"
    shutil.rmtree(sft_dir, ignore_errors=True)
    shutil.rmtree(predict_dir, ignore_errors=True)
    started = time.perf_counter()
    llamafactory_cli("train", str(written[lesson]["sft"]), f"max_steps={TRAIN_STEPS}", f"output_dir={sft_dir}",
                     log=WORK / "train.log")
    trained = time.perf_counter() - started
    steps = [json.loads(line) for line in (sft_dir / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()]
    losses = [step["loss"] for step in steps if "loss" in step]
    if len(losses) != TRAIN_STEPS or not (sft_dir / "adapter_model.safetensors").is_file():
        raise CheckFailed(f"训练没有写出 {TRAIN_STEPS} 步和适配器 / no {TRAIN_STEPS} steps and adapter: {losses}")
    started = time.perf_counter()
    llamafactory_cli("train", str(written[lesson]["predict"]), f"adapter_name_or_path={sft_dir}",
                     f"output_dir={predict_dir}", f"max_samples={PREDICT_ROWS}", log=WORK / "predict.log")
    predicted = time.perf_counter() - started
    records = read_predictions(predict_dir / "generated_predictions.jsonl")
    ours = score(records)
    theirs = json.loads((predict_dir / "predict_results.json").read_text(encoding="utf-8"))
    gaps = {key: abs(ours[key] - theirs[f"predict_{key}"]) for key in METRICS}
    losses = [round(loss, 4) for loss in losses]
    print(f"  训练 / train {TRAIN_STEPS} 步 steps {trained:.0f} s, loss {losses}; "
          f"预测 / predict {len(records)} 行 rows {predicted:.0f} s")
    print(f"  helpers.evaluate: {ours}\n  LLaMA-Factory:    { {k: round(theirs[f'predict_{k}'], 4) for k in METRICS} }")
    problems = [f"{key}: 课程 course {ours[key]} vs LLaMA-Factory {theirs[f'predict_{key}']}"
                for key, gap in gaps.items() if gap > METRIC_TOLERANCE]
    conversations = course_conversations(lesson, "eval", PREDICT_ROWS, TINY)
    for number, (record, conversation) in enumerate(zip(records, conversations, strict=True)):
        prompt = tokenizer.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True)
        if record["prompt"] != prompt:
            problems.append(f"第 {number} 条提示词不同 / prompt {number} differs:\n  course:        {prompt!r}\n"
                            f"  LLaMA-Factory: {record['prompt']!r}")
        if record["label"] != reply_label(tokenizer, conversation):
            problems.append(f"第 {number} 条 label 不同 / label {number} differs: course "
                            f"{reply_label(tokenizer, conversation)!r}, LLaMA-Factory {record['label']!r}")
    if problems:
        raise CheckFailed("\n".join(problems))
    return (f"最大差 / largest gap {max(gaps.values()):.4f} <= {METRIC_TOLERANCE}; "
            f"prompt 与 label 与课程相同 / prompts and labels equal the course's")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/check_llamafactory.py")
    parser.add_argument("--lesson", choices=SFT_LESSONS, default="nekoqa", help="训练与预测的课 / lesson to train")
    parser.add_argument("--rebuild", action="store_true", help="重建虚拟环境 / rebuild the virtual environment")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results: dict[str, str] = {}
    try:
        ensure_venv(args.rebuild)
        version = venv_output("import llamafactory; print(llamafactory.__version__)").strip()
        results["venv"] = f"ok: llamafactory {version}, {display_path(VENV)}"
        WORK.mkdir(parents=True, exist_ok=True)
        written = export_all()
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_model())
        steps = (("parse", lambda: check_parse(written)), ("encode", lambda: check_encoding(written, tokenizer)),
                 ("train+predict", lambda: check_train_and_predict(written, args.lesson, tokenizer)))
    except CheckFailed as error:
        print(f"[准备 / setup] 失败 / FAILED\n{error}", file=sys.stderr)
        return 1
    failed = False
    for name, step in steps:
        print(f"[{name}] ...", flush=True)
        step_started = time.perf_counter()
        try:
            summary = step()
            results[name] = f"ok ({time.perf_counter() - step_started:.0f} s): {summary}"
        except CheckFailed as error:
            failed = True
            results[name] = f"失败 / FAILED:\n{error}"
    print("\n== LLaMA-Factory 检查 / check ==")
    for name, result in results.items():
        print(f"[{name}] {result}")
    print(f"用时 / wall time: {time.perf_counter() - started:.0f} s ({display_path(WORK)})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

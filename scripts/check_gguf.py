"""``make check-gguf``: llama.cpp itself answers a NekoQA held-out question from the course's GGUF exports.

Opt-in, not part of ``make test`` (it compiles llama.cpp; see the README for its time). It

1. builds ``.venv-gguf/`` (reused once complete): ``llama-cpp-python`` pinned in ``requirements-gguf.txt``, compiled
   from the same cached source distribution whose ``convert_hf_to_gguf.py`` the course exports with;
2. merges the NekoQA adapter (tiny profile; trained first when missing) and exports it to f16 and q8_0 with
   ``helpers.gguf``, then quantizes the f16 file to q4_k_m with llama.cpp's own quantizer;
3. asks llama.cpp (``scripts/gguf_side.py`` in the venv) the first held-out question of each file, rendered with the
   chat template stored in the GGUF and tokenized with the GGUF's vocabulary, greedy;
4. compares with the merged model's greedy reply in transformers (no repeat blocking, the same plain greedy).

Fails (exit 1) when llama.cpp's prompt token ids differ from ``apply_chat_template`` on the merged tokenizer for any
file, or when the f16 file's reply differs from the merged model's. q8_0 and q4_k_m replies are printed with how many
leading tokens agree: quantized weights (and llama.cpp's quantized activations) may change a greedy choice.

    python scripts/check_gguf.py [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import venv
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without `pip install -e .`

from check_llamafactory import CheckFailed, run  # noqa: E402 (same folder)

from helpers.gguf import converter_pin, export_gguf, fetch_converter, gguf_dir, human, sdist_path  # noqa: E402
from helpers.gguf_verify import template_ids  # noqa: E402
from helpers.lessons import lesson_split  # noqa: E402
from helpers.merge import merge_lesson  # noqa: E402
from helpers.paths import REPO_ROOT, display_path, is_complete, mark_complete  # noqa: E402
from helpers.profiles import get_profile  # noqa: E402

VENV = REPO_ROOT / ".venv-gguf"
SIDE = Path(__file__).resolve().parent / "gguf_side.py"
LESSON = "nekoqa"
TINY = get_profile("tiny")


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv(rebuild: bool = False) -> float:
    """``.venv-gguf`` with llama-cpp-python compiled from the cached sdist; returns the seconds it took (0: reused)."""
    if is_complete(VENV) and not rebuild:
        print(f"[venv] 复用 / reusing {display_path(VENV)}")
        return 0.0
    started = time.perf_counter()
    fetch_converter()  # the sdist comes with the converter
    print(f"[venv] 编译 / compiling {converter_pin()} into {display_path(VENV)}（2 核约 8 分钟 / ~8 min on 2 cores）",
          flush=True)
    venv.create(VENV, with_pip=True, clear=True)
    # No multimodal library (mtmd/llava): the check answers text only, so it need not be compiled.
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
           "CMAKE_ARGS": f"{os.environ.get('CMAKE_ARGS', '')} -DLLAVA_BUILD=OFF".strip()}
    run([str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(sdist_path())],
        VENV / "install.log", env)
    run([str(venv_python()), "-c", "import llama_cpp"], VENV / "import.log")
    mark_complete(VENV)
    return time.perf_counter() - started


def side(*args: str) -> str:
    """Run ``gguf_side.py`` in the venv; its standard output."""
    log = gguf_dir(Path(args[1])) / f"side-{args[0]}.log"
    run([str(venv_python()), str(SIDE), *args], log, {**os.environ, "PYTHONPATH": ""})
    return log.read_text(encoding="utf-8")


def quantize_q4_k_m(f16: Path) -> Path:
    """The f16 file quantized to q4_k_m by llama.cpp (written as ``.part``, then renamed)."""
    target = f16.with_name(f16.name.replace("-f16", "-q4_k_m"))
    part = target.with_name(target.name + ".part")
    side("quantize", str(f16), str(part), "q4_k_m")
    os.replace(part, target)
    print(f"q4_k_m {display_path(target)}  {human(target.stat().st_size)}")
    return target


def merged_greedy(merged: Path, messages: list[dict], max_tokens: int) -> tuple[list[int], list[int], str]:
    """The merged model's prompt ids and plain greedy reply ids (end-of-turn excluded) and text, in transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype="float32")
    prompt = template_ids(tokenizer, messages, True)
    output = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
    reply = output[: output.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in output else output
    return prompt, reply, tokenizer.decode(reply)


def agreed_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two replies share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="make check-gguf: llama.cpp answers from the course's GGUF")
    parser.add_argument("--rebuild", action="store_true", help="重新编译 .venv-gguf / rebuild the venv")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        build_s = ensure_venv(args.rebuild)
        merged = merge_lesson(LESSON, TINY)
        files = [export_gguf(merged, "f16"), export_gguf(merged, "q8_0")]
        files.append(quantize_q4_k_m(files[0]))
        messages = lesson_split(LESSON, "eval", TINY)[0][:-1]
        prompt, reply, text = merged_greedy(merged, messages, TINY.max_new_tokens)
        print(f"\n问 / question: {messages[-1]['content']}\n合并后的模型 / merged (transformers): {text!r}")
        request = gguf_dir(merged) / "request.json"
        request.write_text(json.dumps({"messages": messages, "max_tokens": TINY.max_new_tokens}, ensure_ascii=False),
                           encoding="utf-8")
        failures = []
        for path in files:
            answer = json.loads(side("answer", str(path), str(request)).strip().splitlines()[-1])
            same = agreed_prefix(answer["reply_ids"], reply)
            kind = path.stem.rsplit("-", 1)[-1]
            print(f"{kind:<6} llama.cpp: {answer['text']!r}\n       提示词 token 相同 / prompt ids equal: "
                  f"{answer['prompt_ids'] == prompt} | 回复前 {same}/{len(reply)} 个 token 相同 / leading tokens agree")
            if answer["prompt_ids"] != prompt:
                failures.append(f"{kind}: llama.cpp 的提示词 token 与训练模板不同 / prompt ids differ from training")
            if kind == "f16" and answer["reply_ids"] != reply:
                failures.append("f16: llama.cpp 的回复与合并后的模型不同 / reply differs from the merged model's")
    except CheckFailed as error:
        print(error, file=sys.stderr)
        return 1
    total = time.perf_counter() - started
    print(f"\n编译 / build {build_s:.0f} s | 共 / total {total:.0f} s")
    for failure in failures:
        print("失败 / FAILED:", failure, file=sys.stderr)
    print("全部通过 / all passed" if not failures else "")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

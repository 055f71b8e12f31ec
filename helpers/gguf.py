"""Convert a merged model folder to GGUF (llama.cpp / Ollama) with llama.cpp's own ``convert_hf_to_gguf.py``.

    export_gguf(merged_dir("nekoqa", profile), "q8_0")      # -> outputs/gguf/nekoqa-tiny/nekoqa-tiny-q8_0.gguf

Where the converter comes from: the source distribution of ``llama-cpp-python`` pinned in ``requirements-gguf.txt``
(``pip download``, cached under the course cache). It vendors a fixed llama.cpp commit with ``convert_hf_to_gguf.py``,
its ``conversion`` package and its own ``gguf-py``. Why this and not a ``git clone`` of llama.cpp: PyPI (or its
mirrors in China) is reachable wherever the course installs anything, GitHub often is not; one pin names both the
converter and the llama.cpp that ``make check-gguf`` compiles, so the file is read by the code that wrote it; and
nothing is vendored into this repository. The converter runs with the course's own Python (torch, transformers,
numpy, sentencepiece) and its vendored ``gguf-py``, which is newer than the ``gguf==0.19.0`` wheel transformers
reads GGUF with although both say 0.19.0; ``helpers.gguf_verify`` loads every export back through that wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from helpers.paths import (
    REPO_ROOT,
    built_in_place_of,
    cache_root,
    display_path,
    is_complete,
    one_at_a_time,
    outputs_dir,
)

PIN_FILE = REPO_ROOT / "requirements-gguf.txt"
OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py writes by itself (q4_k_m needs llama-quantize)
BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 int8 + one f16 scale per block
VENDORED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")  # under vendor/llama.cpp/
SPARE_BYTES = 64 * 2**20  # headroom on top of the estimated file size when checking free space
LOG_TAIL_LINES = 25


class GGUFError(RuntimeError):
    """The export cannot run or failed; the message says why and what to do, in Chinese and English."""


def converter_pin() -> str:
    """``llama-cpp-python==X.Y.Z`` from ``requirements-gguf.txt``, the one place that pins it."""
    for line in PIN_FILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("llama-cpp-python=="):
            return line.strip()
    raise GGUFError(f"{PIN_FILE.name} 里没有 llama-cpp-python==… / {PIN_FILE.name} pins no llama-cpp-python")


def converter_dir() -> Path:
    """Where the converter of the pinned version is unpacked: ``<course cache>/llama.cpp/llama-cpp-python-X.Y.Z``."""
    return cache_root() / "llama.cpp" / converter_pin().replace("==", "-")


def sdist_path() -> Path:
    """The cached source distribution (``make check-gguf`` compiles it without downloading again)."""
    return converter_dir() / "sdist" / f"llama_cpp_python-{converter_pin().split('==')[1]}.tar.gz"


def fetch_error(pin: str, output: str) -> GGUFError:
    return GGUFError(
        f"下载 GGUF 转换器失败（`pip download {pin}`，需要能访问 PyPI 或它的镜像）。请联网后重新运行 `make setup` "
        "或 `python -m helpers.gguf fetch`；pip 设置了镜像时（pip config list）也会用镜像。\n"
        f"Could not download the GGUF converter (`pip download {pin}` needs PyPI or a mirror): connect and run "
        f"`make setup` or `python -m helpers.gguf fetch` again.\n--- pip ---\n{output[-2000:]}"
    )


def unpack_converter(sdist: Path, target: Path) -> None:
    """Extract only the converter's files from the sdist's ``vendor/llama.cpp`` into ``target``."""
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            _, _, inside = member.name.partition("/vendor/llama.cpp/")
            if inside and inside.startswith(VENDORED) and (member.isfile() or member.isdir()):
                member.name = inside
                members.append(member)
        archive.extractall(target, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def fetch_converter() -> Path:
    """The unpacked converter; downloaded once (~77 MB sdist, about a minute) and cached, then reused offline."""
    target = converter_dir()
    with one_at_a_time(target):
        if is_complete(target):
            return target
        pin = converter_pin()
        print(f"下载 GGUF 转换器 / downloading the GGUF converter: {pin}（源码包约 77 MB / sdist ~77 MB）", flush=True)
        with built_in_place_of(target) as work:
            done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                   "--disable-pip-version-check", "-q", "-d", str(work / "sdist"), pin],
                                  capture_output=True, text=True, check=False)
            sdists = list((work / "sdist").glob("llama_cpp_python-*.tar.gz"))
            if done.returncode or not sdists:
                raise fetch_error(pin, done.stdout + done.stderr)
            unpack_converter(sdists[0], work)
    print(f"GGUF 转换器 / converter: {display_path(target)}")
    return target


def gguf_dir(merged: Path) -> Path:
    """Where a merged folder's GGUF files go: ``outputs/gguf/<folder name>/``."""
    return outputs_dir("gguf", merged.name)


def check_merged_folder(merged: Path) -> dict:
    """The folder's ``config.json``; GGUFError when it is not a saved (merged) transformers model."""
    config = merged / "config.json"
    if not config.is_file() or not any(merged.glob("*.safetensors")):
        raise GGUFError(
            f"找不到合并后的模型 {display_path(merged)}（需要 config.json 和 *.safetensors）。请先运行第 06 课的合并"
            "（或 helpers.merge.merge_lesson），再导出 GGUF；只有 LoRA 适配器的文件夹不能直接转换。\n"
            f"No merged model at {display_path(merged)} (config.json and *.safetensors): merge first (lesson 06, "
            "helpers.merge.merge_lesson), then export; an adapter folder alone cannot be converted."
        )
    return json.loads(config.read_text(encoding="utf-8"))


def weight_count(merged: Path) -> int:
    """Number of weights in the folder's safetensors files (read from their headers, not loaded)."""
    from safetensors import safe_open

    total = 0
    for shard in merged.glob("*.safetensors"):
        with safe_open(shard, framework="pt") as tensors:
            for name in tensors.keys():  # noqa: SIM118 (safe_open is not iterable)
                count = 1
                for size in tensors.get_slice(name).get_shape():
                    count *= size
                total += count
    return total


def human(size: float) -> str:
    """Bytes as MB / GB (powers of 1000, as ``ls -lh --si`` and model cards write them)."""
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def check_disk(folder: Path, needed: int) -> None:
    """GGUFError when ``folder``'s disk has less than ``needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise GGUFError(no_space_message(folder, needed, free))


def no_space_message(folder: Path, needed: int, free: int | None) -> str:
    have = "未知 / unknown" if free is None else human(free)
    return (
        f"磁盘空间不够：导出到 {display_path(folder)} 约需 {human(needed)}，可用 {have}。请删掉不用的导出或检查点"
        "（outputs/），或把 COURSE_CACHE / 输出放到更大的盘（AutoDL：/root/autodl-tmp 数据盘）。\n"
        f"Not enough disk space: the export to {display_path(folder)} needs about {human(needed)}, {have} free. "
        "Delete old exports or checkpoints (outputs/), or use a larger disk (AutoDL: the /root/autodl-tmp data disk)."
    )


def failure(log: Path, architecture: str, folder: Path, needed: int) -> GGUFError:
    """The converter's failure, classified: unsupported architecture, full disk, or anything else with its log."""
    text = log.read_text(encoding="utf-8", errors="replace")
    tail = "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
    if "is not supported" in text:
        return GGUFError(
            f"这个 llama.cpp 版本（{converter_pin()}）的 convert_hf_to_gguf.py 不支持 {architecture}。"
            "请换一个 llama.cpp 支持的模型（Qwen2.5、Llama、SmolLM2 等），或在 requirements-gguf.txt 里换更新的版本后"
            "运行 `python -m helpers.gguf fetch`；支持的结构："
            "`python <转换器>/convert_hf_to_gguf.py --print-supported-models`。\n"
            f"llama.cpp's converter ({converter_pin()}) does not support {architecture}: choose a model it supports, "
            "or pin a newer llama-cpp-python in requirements-gguf.txt and run `python -m helpers.gguf fetch`."
            f"\n--- {display_path(log)} ---\n{tail}"
        )
    if "No space left on device" in text or "Errno 28" in text:
        return GGUFError(no_space_message(folder, needed, shutil.disk_usage(folder).free) + f"\n{tail}")
    return GGUFError(f"GGUF 转换失败 / the GGUF conversion failed; 日志 / log {display_path(log)}:\n{tail}")


def is_fresh(gguf: Path, merged: Path) -> bool:
    """Whether ``gguf`` was written after every file of the merged folder (a re-merge makes it stale)."""
    return gguf.is_file() and gguf.stat().st_mtime >= max(p.stat().st_mtime for p in merged.iterdir() if p.is_file())


def run_converter(command: list[str], part: Path, log: Path, expected: int, desc: str) -> int:
    """Run the converter, showing the growing output file as a progress bar; returns its exit status."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # always its own gguf-py: the version it was written against
    with log.open("w", encoding="utf-8") as out, tqdm(total=expected, unit="B", unit_scale=True, desc=desc) as bar:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        while process.poll() is None:
            time.sleep(0.5)
            if part.exists():
                bar.update(part.stat().st_size - bar.n)
        if part.exists() and process.returncode == 0:
            bar.total = part.stat().st_size  # the estimate replaced by the real size
            bar.update(bar.total - bar.n)
    return process.returncode


def export_gguf(merged: Path, outtype: str = "f16", target: Path | None = None, force: bool = False) -> Path:
    """Convert ``merged`` to one GGUF file; written as ``*.part`` and renamed when complete. Reuses a fresh one."""
    if outtype not in OUTTYPES:
        raise GGUFError(f"不支持的 outtype {outtype!r}，可选 / choose one of: {', '.join(OUTTYPES)}")
    merged = Path(merged)
    config = check_merged_folder(merged)
    target = target or gguf_dir(merged) / f"{merged.name}-{outtype}.gguf"
    if is_fresh(target, merged) and not force:
        print(f"使用已导出的 / reusing {display_path(target)}（{human(target.stat().st_size)}）")
        return target
    converter = fetch_converter() / "convert_hf_to_gguf.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    expected = int(weight_count(merged) * BYTES_PER_WEIGHT[outtype])
    check_disk(target.parent, expected + SPARE_BYTES)
    part, log = target.with_name(target.name + ".part"), target.with_suffix(".log")
    part.unlink(missing_ok=True)
    started = time.perf_counter()
    command = [sys.executable, str(converter), str(merged), "--outfile", str(part), "--outtype", outtype]
    try:
        code = run_converter(command, part, log, expected, f"{outtype:<5}")
        if code:
            raise failure(log, (config.get("architectures") or ["?"])[0], target.parent, expected)
        os.replace(part, target)  # atomic: the final name only ever holds a complete file
    finally:
        part.unlink(missing_ok=True)
    print(f"{outtype:<5} {display_path(target)}  {human(target.stat().st_size)}  "
          f"（{time.perf_counter() - started:.0f} 秒 / s）", flush=True)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.gguf fetch`` | ``python -m helpers.gguf export FOLDER [--outtype q8_0]``."""
    import argparse

    parser = argparse.ArgumentParser(description="GGUF 导出 / GGUF export with llama.cpp's converter")
    parser.add_argument("command", choices=("fetch", "export"))
    parser.add_argument("folder", nargs="?", type=Path, help="合并后的模型文件夹 / merged model folder")
    parser.add_argument("--outtype", default="q8_0", choices=OUTTYPES)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch_converter()
        elif args.folder is None:
            parser.error("export 需要文件夹 / export needs a folder")
        else:
            export_gguf(args.folder, args.outtype)
    except GGUFError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

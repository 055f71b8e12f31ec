"""Environment check: can this machine run the course, and what should be fixed first?

Run it as ``python -m helpers.env`` or from notebook 00. Each line gets a verdict
(ok / warning / problem) and, where needed, what to do. Exit code 1 only on a problem.
"""

from __future__ import annotations

import platform
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from helpers.net import MODELSCOPE_URL, SUGGESTED_MIRROR, hf_endpoint, probe_all
from helpers.paths import AUTODL_DATA_DISK, REPO_ROOT, cache_root, display_path
from helpers.profiles import get_profile

OK, WARNING, PROBLEM = "ok", "warning", "problem"
MIN_FREE_GB = 5.0
MIN_PYTHON = (3, 10)
KEY_LIBRARIES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate", "modelscope")


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    item: str
    value: str
    verdict: str
    advice: str = ""


def pinned_versions(requirements: Path = REPO_ROOT / "requirements.txt") -> dict[str, str]:
    """Package name -> version pinned with ``==`` in requirements.txt."""
    pins = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def check_python() -> Check:
    version = platform.python_version()
    if sys.version_info[:2] < MIN_PYTHON:
        return Check("Python", version, PROBLEM, "需要 Python >= 3.10 / needs Python 3.10 or newer")
    return Check("Python", version, OK)


def check_library(name: str, pinned: str | None) -> Check:
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        return Check(name, "未安装 missing", PROBLEM, "运行 `make setup` / run `make setup`")
    if pinned and installed.split("+")[0] != pinned:
        return Check(
            name, f"{installed} (课程固定 pinned {pinned})", WARNING,
            "版本不同可能导致参数报错，建议 `make setup` / other versions may break the lessons: `make setup`",
        )
    return Check(name, installed, OK)


def check_gpu() -> list[Check]:
    import torch

    from helpers.hardware import bf16_supported  # imports torch: only when the GPU is checked

    build = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU)'}"
    if not torch.cuda.is_available():
        return [
            Check("GPU", "无 none", WARNING,
                  "只能运行 tiny 配置；真实模型请租用 GPU / CPU only: the tiny profile runs, real models need a GPU"),
            Check("torch build", build, OK),
        ]
    props = torch.cuda.get_device_properties(0)
    memory = f"{props.total_memory / 2**30:.1f} GiB"
    driver = torch.cuda.driver_version() if hasattr(torch.cuda, "driver_version") else "?"
    bf16 = bf16_supported()  # native bf16 only: T4 / V100 emulate it slowly, the course uses fp16 there
    return [
        Check("GPU", f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, {memory}", OK),
        Check("torch build", f"{build}, driver {driver}", OK),
        Check("bf16", "支持 yes" if bf16 else "不支持 no", OK if bf16 else WARNING,
              "" if bf16 else "训练将用 fp16，注意 loss 为 0/NaN / training falls back to fp16; watch for loss 0/NaN"),
    ]


def check_disk(label: str, path: Path) -> Check:
    free_gb = shutil.disk_usage(path).free / 2**30
    value = f"{display_path(path)}: {free_gb:.1f} GB free"
    if free_gb < MIN_FREE_GB:
        return Check(label, value, PROBLEM,
                     f"可用空间不足 {MIN_FREE_GB:.0f} GB，请清理或换到数据盘 / less than {MIN_FREE_GB:.0f} GB free: "
                     "clean up or use the data disk (COURSE_CACHE)")
    return Check(label, value, OK)


def check_cache_location(cache: Path, repo: Path = REPO_ROOT) -> Check:
    """The model cache must not be the checkout (or inside it): deleting or re-cloning the repository deletes models."""
    cache, repo = cache.resolve(), repo.resolve()
    if cache == repo or repo in cache.parents:
        return Check(
            "course cache location", f"{display_path(cache)}（在仓库里 / inside the repository）", WARNING,
            "删除或重新 clone 仓库会连下载的模型一起删掉：把仓库 clone 到别处"
            "（README：/root/autodl-tmp/llm-finetune-course），"
            "或设 export COURSE_CACHE=/root/autodl-tmp/llm-course-cache / deleting or re-cloning the repository would "
            "delete the downloaded models: clone it elsewhere, or set COURSE_CACHE to a folder outside it")
    return Check("course cache location", f"{display_path(cache)}（仓库之外 / outside the repository）", OK)


def check_hubs() -> list[Check]:
    endpoint = hf_endpoint()
    urls = [MODELSCOPE_URL, endpoint] + ([SUGGESTED_MIRROR] if endpoint != SUGGESTED_MIRROR else [])
    results = probe_all(urls)
    advice = {
        MODELSCOPE_URL: "下载将尝试 Hugging Face / downloads will try Hugging Face next",
        endpoint: f"国内可设 HF_ENDPOINT={SUGGESTED_MIRROR} / in China set HF_ENDPOINT={SUGGESTED_MIRROR}",
        SUGGESTED_MIRROR: "镜像不可达：用 ModelScope 或本地路径 / mirror unreachable: use ModelScope or a local path",
    }
    return [
        Check(f"reach {url}", "可达 reachable" if error is None else error,
              OK if error is None else WARNING, "" if error is None else advice[url])
        for url, error in results.items()
    ]


def run_checks() -> list[Check]:
    """Every check of the report, in display order."""
    profile = get_profile()
    checks = [Check("course profile", profile.name, OK), check_python()]
    pins = pinned_versions()
    checks += [check_library(name, pins.get(name)) for name in KEY_LIBRARIES]
    if all(c.verdict != PROBLEM for c in checks if c.item == "torch"):
        checks += check_gpu()
    checks.append(check_disk("disk: system", Path.home()))
    if AUTODL_DATA_DISK.is_dir():
        checks.append(check_disk("disk: data (AutoDL)", AUTODL_DATA_DISK))
    checks.append(check_disk("disk: course cache", cache_root()))
    checks.append(check_cache_location(cache_root()))
    checks += check_hubs()
    return checks


def format_report(checks: list[Check]) -> str:
    """A plain-text table, one check a line, then the advice for every non-ok line."""
    width = max(len(c.item) for c in checks)
    lines = [f"{c.verdict.upper():8} {c.item:<{width}}  {c.value}" for c in checks]
    todo = [f"- {c.item}: {c.advice}" for c in checks if c.verdict != OK and c.advice]
    if todo:
        lines += ["", "建议 / what to do:", *todo]
    return "\n".join(lines)


def main() -> int:
    checks = run_checks()
    print(format_report(checks))
    return 1 if any(c.verdict == PROBLEM for c in checks) else 0


if __name__ == "__main__":
    raise SystemExit(main())

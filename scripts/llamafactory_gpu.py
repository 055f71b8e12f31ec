"""LLaMA-Factory 0.9.5 beside the course, on the torch this machine already has (on AutoDL: the image's CUDA build).

    python scripts/llamafactory_gpu.py           # builds .venv-llamafactory-gpu (reused once built), prints what's next
    python scripts/llamafactory_gpu.py --check   # also: torch and the course's packages unchanged, YAMLs parse there

``pip install llamafactory`` into the course's environment would downgrade transformers, trl, peft, datasets and
accelerate (LLaMA-Factory 0.9.5 pins older ones) and break the lessons. So the venv sees the course's site-packages
(``--system-site-packages``: torch, bitsandbytes, jieba ... are used from there, nothing is copied) and gets
LLaMA-Factory's own pins installed over them inside the venv; a pip constraint holds torch (and torchvision /
torchaudio where installed) at the installed versions, so no dependency can swap in another torch. The course's
environment is not touched: pip never uninstalls outside the venv.

The pip and LLaMA-Factory steps are ``scripts/check_llamafactory.py``'s (the CPU check); ``make check-llamafactory``
runs this with ``--check`` after it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import venv
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parent))

import check_llamafactory as lf

from helpers.paths import REPO_ROOT, display_path, is_complete, mark_complete
from helpers.ports import ALL_INTERFACES, AUTODL_PORT, how_to_open

GPU_VENV = REPO_ROOT / ".venv-llamafactory-gpu"
HELD = ("torch", "torchvision", "torchaudio")  # the image's builds, matched to its CUDA: never replaced
COURSE_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")  # must not change


def held_versions() -> list[str]:
    """``name==version`` of the installed torch (and torchvision / torchaudio where installed), for the constraint."""
    held = []
    for name in HELD:
        try:
            held.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    if not held or not held[0].startswith("torch=="):
        raise lf.CheckFailed("这个环境里没有 torch：先运行 make setup / no torch here: run make setup first")
    return held


def installed(names: tuple[str, ...]) -> dict[str, str]:
    """The versions this (the course's) environment has of ``names``."""
    return {name: metadata.version(name) for name in names}


def ensure_gpu_venv(rebuild: bool = False) -> None:
    """``.venv-llamafactory-gpu``: the course's packages visible, LLaMA-Factory's pins over them, torch held."""
    if is_complete(GPU_VENV) and not rebuild:
        print(f"[venv] 复用 / reusing {display_path(GPU_VENV)}")
        return
    if sys.prefix != sys.base_prefix:
        raise lf.CheckFailed(
            f"{sys.executable} 本身在一个 venv 里，--system-site-packages 看不到它的包；请用课程所在环境的 Python"
            f"（AutoDL 镜像自带的 python，或 conda 环境）运行。\n"
            f"{sys.executable} runs inside a venv, whose packages --system-site-packages would not see: run this with "
            f"the course's own Python (the image's, or a conda environment's).")
    shutil.rmtree(GPU_VENV, ignore_errors=True)
    held = held_versions()
    print(f"[venv] 创建 / creating {display_path(GPU_VENV)} ({lf.LLAMAFACTORY}; 保留 / keeping {', '.join(held)}; "
          f"需要几分钟 / takes minutes)", flush=True)
    venv.create(GPU_VENV, with_pip=True, system_site_packages=True)
    lf.install_llamafactory(GPU_VENV, lf.pip_install(GPU_VENV, held), [])
    mark_complete(GPU_VENV)


def same_torch() -> str:
    """The venv imports the course's very torch (same version, same files); CheckFailed otherwise."""
    import torch

    code = "import torch; print(torch.__version__); print(torch.__file__)"
    version, path = lf.venv_output(code, GPU_VENV).split()
    if (version, path) != (torch.__version__, torch.__file__):
        raise lf.CheckFailed(f"venv 里的 torch 不是课程的 / the venv's torch differs: {version} {path} "
                             f"(course: {torch.__version__} {torch.__file__})")
    return f"torch {version}（与课程同一份 / the course's own, {display_path(Path(path).parent)}）"


def next_steps(lesson: str = "nekoqa") -> str:
    """What to type after the build: export in the course's environment, then train and chat with LLaMA-Factory."""
    cli = f"{display_path(GPU_VENV)}/bin/llamafactory-cli"
    data = f"outputs/llamafactory/data/course_{lesson}"
    web = f"GRADIO_SERVER_NAME={ALL_INTERFACES} GRADIO_SERVER_PORT={AUTODL_PORT}"  # AutoDL's custom service port
    return "\n".join([
        "下一步 / next (在仓库根目录 / from the repository root):",
        f"  python -m helpers.llamafactory export {lesson} --out outputs/llamafactory/data   # 课程环境 / course env",
        f"  {cli} train {data}_sft.yaml",
        f"  {web} {cli} webchat {data}_infer.yaml   # 网页对话 / chat page",
        f"  {web} {cli} webui   # 网页界面 / LLaMA-Factory's web UI",
        how_to_open(AUTODL_PORT, ALL_INTERFACES),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/llamafactory_gpu.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="重建虚拟环境 / rebuild the virtual environment")
    parser.add_argument("--check", action="store_true",
                        help="检查 torch 与课程的包未变、导出的 YAML 能被解析 / check torch kept, YAMLs parse")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    before = installed(COURSE_PACKAGES)
    try:
        ensure_gpu_venv(args.rebuild)
        print(f"[venv] {display_path(GPU_VENV)}: llamafactory "
              f"{lf.venv_output('import llamafactory; print(llamafactory.__version__)', GPU_VENV).strip()}, "
              f"{same_torch()}")
        after = installed(COURSE_PACKAGES)
        if after != before:
            raise lf.CheckFailed(f"课程环境的包变了 / the course's packages changed: {before} -> {after}")
        if args.check:
            lf.WORK.mkdir(parents=True, exist_ok=True)
            print(f"[parse] {lf.check_parse(lf.export_all(), GPU_VENV)}")
            print(f"[course] 课程环境未变 / the course's environment is unchanged: "
                  f"{', '.join(f'{k} {v}' for k, v in after.items())}")
    except lf.CheckFailed as error:
        print(f"失败 / FAILED\n{error}", file=sys.stderr)
        return 1
    print(f"用时 / wall time: {time.perf_counter() - started:.0f} s\n{next_steps()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run the course's notebooks: ``python -m helpers.course run [--profile tiny] [NOTEBOOK ...]``.

Executed copies go to ``runs/<profile>/`` (the notebooks in ``notebooks/`` stay untouched),
and a summary table says which lesson passed and how long it took. ``--in-place`` rewrites
the committed notebooks with fresh outputs (for maintainers refreshing the course).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from jupyter_core.paths import jupyter_runtime_dir
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from tqdm.auto import tqdm
from traitlets.config import Config

from helpers.paths import REPO_ROOT, display_path
from helpers.profiles import PROFILE_ENV, get_profile

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
# 30 minutes a cell: above the longest training cell estimated on a 24 GB card (lesson 05 on a 7B model, ~18 min,
# helpers.cost); tiny cells take seconds. A cell past it fails with nbclient's timeout, naming the cell.
CELL_TIMEOUT_S = 1800


@dataclass(frozen=True)
class LessonResult:
    notebook: str
    ok: bool
    seconds: float
    error: str = ""


def lessons() -> list[Path]:
    """The numbered notebooks, in lesson order."""
    return sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def kernel_config() -> Config:
    """Kernels that talk to this process over Unix sockets (IPC), not TCP.

    No network port is opened, and ipykernel does not print "Kernel is running over TCP without encryption" (its own
    advice is IPC) once per notebook between the progress bar and the table. The sockets' path is absolute: the kernel
    runs in ``notebooks/``, this process elsewhere, and names this process: two course runs at once (``make course``
    beside ``make test``) would otherwise pick the same socket files and reject each other's messages ("Invalid
    Signature"). Windows has no IPC transport and keeps TCP.
    """
    if os.name != "posix":
        return Config()
    prefix = Path(jupyter_runtime_dir()) / f"course-kernel-{os.getpid()}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    return Config({"KernelManager": {"transport": "ipc", "ip": str(prefix)}})


def execute(notebook: Path, destination: Path) -> LessonResult:
    """Execute one notebook in its own folder and save the executed copy to ``destination``."""
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", config=kernel_config(),
                            resources={"metadata": {"path": str(notebook.parent)}})
    start = time.perf_counter()
    error = ""
    try:
        client.execute()
    except CellExecutionError as failure:
        error = str(failure).strip().splitlines()[-1][:300]
    destination.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, destination)
    return LessonResult(notebook.name, not error, time.perf_counter() - start, error)


def summary(results: list[LessonResult]) -> str:
    lines = [f"{'notebook':<32} {'result':<6} {'seconds':>8}"]
    for r in results:
        lines.append(f"{r.notebook:<32} {'ok' if r.ok else 'FAILED':<6} {r.seconds:>8.1f}")
        if r.error:
            lines.append(f"    {r.error}")
    passed, seconds = sum(r.ok for r in results), sum(r.seconds for r in results)
    lines.append(f"{'total':<32} {passed}/{len(results):<4} {seconds:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks / 运行课程")
    run.add_argument("notebooks", nargs="*", type=Path, help="default: every numbered notebook")
    run.add_argument("--profile", help="tiny or gpu (default: $COURSE_PROFILE, else by hardware)")
    run.add_argument("--in-place", action="store_true", help="write outputs into notebooks/ (maintainers)")
    args = parser.parse_args(argv)

    profile = get_profile(args.profile)
    os.environ[PROFILE_ENV] = profile.name  # the kernels inherit it
    out_dir = REPO_ROOT / "runs" / profile.name
    notebooks = [p.resolve() for p in args.notebooks] or lessons()
    results = []
    for notebook in tqdm(notebooks, desc=f"course ({profile.name})", unit="notebook"):
        destination = notebook if args.in_place else out_dir / notebook.name
        results.append(execute(notebook, destination))
    print(summary(results))
    if not args.in_place:
        print(f"执行后的笔记本 / executed notebooks: {display_path(out_dir)}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Run the notebooks as tests (nbval), two at a time, each in its own pytest process with one torch thread.

    python scripts/test_notebooks.py                      # every notebook, 2 at a time (what `make test` runs)
    python scripts/test_notebooks.py --jobs 1 notebooks/07_evaluation.ipynb

Lesson 03 trains the NekoQA adapter in its own cells (it teaches that code), so the lessons that load that
adapter start only after it has finished; lesson 07 also waits for 04 and 05, which retrain their adapters on
purpose. Any other two notebooks may run side by side: adapters and merged models are written and read under
a file lock (``helpers.paths.one_at_a_time``). One thread each: two notebooks with two torch threads each on
2 cores oversubscribe them and run several times slower.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run from anywhere without `pip install -e .`

from helpers.registry import ADAPTERS_USED, LESSONS  # noqa: E402

NBVAL = ["-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with", "tests/nbval_sanitize.cfg",
         "--durations=3", "-q"]
# Notebook -> the training notebooks it waits for: those whose adapters it loads (04 and 05 retrain theirs on purpose).
AFTER = {number: {LESSONS[lesson].number for lesson in used} for number, used in ADAPTERS_USED.items()}
# The training lessons (SFT and DPO) are the longest: each starts as soon as what it waits for is done, before the
# short notebooks, so that no long one is left running alone at the end.
FIRST = tuple(lesson.number for lesson in LESSONS.values())
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def lesson(notebook: Path) -> str:
    return notebook.name[:2]


def run_order(notebooks: list[Path]) -> list[Path]:
    """The training lessons first (``FIRST``), then the rest in lesson order."""
    return sorted(notebooks, key=lambda nb: (lesson(nb) not in FIRST, nb.name))


def ready(notebook: Path, finished: set[str], selected: set[str]) -> bool:
    """Whether every selected lesson that ``notebook`` waits for has finished."""
    return AFTER.get(lesson(notebook), set()) & selected <= finished


def start(notebook: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, *NBVAL, str(notebook)], cwd=REPO_ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **ONE_THREAD})


def run_all(notebooks: list[Path], jobs: int) -> dict[Path, tuple[int, float]]:
    """Run every notebook under nbval, ``jobs`` at a time; print each one's output when it ends."""
    pending, selected = run_order(notebooks), {lesson(nb) for nb in notebooks}
    running: dict[Path, tuple[subprocess.Popen, float, Path]] = {}
    results: dict[Path, tuple[int, float]] = {}
    logs = Path(tempfile.mkdtemp(prefix="nbval-"))
    while pending or running:
        finished = {lesson(nb) for nb in results}
        for notebook in [nb for nb in pending if ready(nb, finished, selected)][: jobs - len(running)]:
            pending.remove(notebook)
            log = logs / f"{notebook.stem}.log"
            running[notebook] = (start(notebook, log), time.perf_counter(), log)
        time.sleep(0.5)
        for notebook, (process, started, log) in list(running.items()):
            if process.poll() is not None:
                del running[notebook]
                results[notebook] = (process.returncode, time.perf_counter() - started)
                print(f"===== {notebook.relative_to(REPO_ROOT)}: rc {process.returncode}, "
                      f"{results[notebook][1]:.0f} s =====\n{log.read_text()}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nbval over the notebooks, several at a time")
    parser.add_argument("notebooks", nargs="*", type=Path, help="默认全部 / default: notebooks/*.ipynb")
    parser.add_argument("--jobs", type=int, default=2, help="同时运行几个 / how many at once (default 2)")
    args = parser.parse_args(argv)
    notebooks = [nb.resolve() for nb in args.notebooks] or sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    start_time = time.perf_counter()
    results = run_all(notebooks, args.jobs)
    print("\n笔记本 / notebook                          rc   秒 / s")
    for notebook, (code, seconds) in sorted(results.items()):
        print(f"{notebook.name:<42} {code:>2} {seconds:>6.0f}")
    failed = [nb.name for nb, (code, _) in results.items() if code != 0]
    print(f"共 {time.perf_counter() - start_time:.0f} 秒 / {time.perf_counter() - start_time:.0f} s in all; "
          + (f"失败 / failed: {', '.join(failed)}" if failed else "全部通过 / all passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

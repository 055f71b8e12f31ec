"""Where the course keeps models, data downloads and run outputs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

CACHE_ENV = "COURSE_CACHE"
AUTODL_DATA_DISK = Path("/root/autodl-tmp")
REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
COMPLETE_MARKER = ".course-complete"


def cache_root() -> Path:
    """The course cache: ``$COURSE_CACHE``, else AutoDL's data disk, else ``~/.cache/llm-course``.

    AutoDL's system disk is small (30 GB) and fills up with one 7B model; its data disk
    ``/root/autodl-tmp`` is the place for weights.
    """
    if os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV]).expanduser()
    elif AUTODL_DATA_DISK.is_dir():
        root = AUTODL_DATA_DISK / "llm-course"
    else:
        root = Path.home() / ".cache" / "llm-course"
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    path = cache_root() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def outputs_dir(*parts: str) -> Path:
    """A folder under ``outputs/`` in the repository (adapters, predictions, plots)."""
    path = REPO_ROOT.joinpath("outputs", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def display_path(path: str | os.PathLike) -> str:
    """A path as shown to students: relative to the repository or ``~``, never machine-specific."""
    path = Path(path).resolve()
    for base, label in ((REPO_ROOT, "."), (Path.home(), "~")):
        if path == base or base in path.parents:
            return str(Path(label) / path.relative_to(base))
    return str(path)


def is_complete(folder: Path) -> bool:
    """A folder (model, adapter, download) counts only once its marker is written, after every file."""
    return (folder / COMPLETE_MARKER).is_file()


def mark_complete(folder: Path) -> None:
    (folder / COMPLETE_MARKER).write_text("ok\n", encoding="utf-8")


@contextmanager
def one_at_a_time(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock while building or reading it: notebooks run in parallel wait instead of colliding."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder.parent / f".{folder.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"等待另一个进程写完 {display_path(folder)} / waiting for another process to finish writing it")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@contextmanager
def built_in_place_of(target: Path) -> Iterator[Path]:
    """A temporary sibling folder to build ``target`` in: marked complete and renamed to ``target`` (replacing what an
    interrupted older attempt left) only when the block succeeds, so nobody ever reads a half-written folder."""
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield work
        mark_complete(work)
        shutil.rmtree(target, ignore_errors=True)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)

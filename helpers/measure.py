"""Measured memory: the peak of a stretch of work (GPU allocator, or the process's peak RSS on CPU), and a forked
run whose peak is its own; ``helpers.memory`` estimates what these measure."""

from __future__ import annotations

import multiprocessing
import re
import resource
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

PROC_STATUS = Path("/proc/self/status")  # Linux: the process's current (VmRSS) and peak (VmHWM) resident memory
Result = TypeVar("Result")


def reset_peak() -> None:
    """Start measuring a new peak: the GPU allocator's, or on Linux the process's peak RSS (``VmHWM``)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    elif Path("/proc/self/clear_refs").exists():
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)


def peak_bytes() -> int:
    """The peak since ``reset_peak``: GPU memory allocated by torch, or the process's peak RSS on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    if PROC_STATUS.exists():
        return _proc_status_bytes("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: bytes, and no reset


def rss_bytes() -> int:
    """The process's resident memory now (Linux)."""
    return _proc_status_bytes("VmRSS")


def _proc_status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` (given there in kB), in bytes."""
    return int(re.search(rf"{field}:\s+(\d+) kB", PROC_STATUS.read_text()).group(1)) * 1024


def run_forked(threads: int, run: Callable[..., Result], *args) -> Result:
    """``run(*args)`` in a forked process with ``threads`` torch threads, so its peak RSS is its own.

    The parent must run torch with one thread (``torch.set_num_threads(1)`` before any work): a child forked from a
    process whose OpenMP thread pool has started hangs at its first parallel operation.
    """
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()

    def target() -> None:
        torch.set_num_threads(threads)
        results.put(run(*args))

    process = context.Process(target=target)
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"子进程失败 / forked run failed (exit code {process.exitcode})")
    return results.get()

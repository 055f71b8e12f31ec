"""Messages a student would read as errors: none in `make course`'s output or in the lessons on CPU."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import course
from helpers.noise import BNB_CPU_LOGGER, BNB_KERNELS_MESSAGE
from helpers.paths import REPO_ROOT


# Prevents: "Failed to load CPU gemm_4bit_forward ... pip install kernels" under every 4-bit cell of lessons 03-11
# (on CPUs with AVX512-BF16 only, so this machine may never print it): the filter must match bitsandbytes' own logger
# and text, read from the installed source, and be installed by importing helpers.
def test_bitsandbytes_kernels_message_is_filtered_where_bitsandbytes_logs_it():
    import importlib.util

    source = Path(importlib.util.find_spec(BNB_CPU_LOGGER).origin).read_text(encoding="utf-8")
    assert "logging.getLogger(__name__)" in source and f'"{BNB_KERNELS_MESSAGE}: %s.' in source
    code = f"import helpers, logging; print(logging.getLogger({BNB_CPU_LOGGER!r}).filters)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert "DropMessage" in done.stdout


# Prevents: the filter hiding bitsandbytes' other warnings (a real problem must still be shown).
def test_the_filter_drops_only_the_kernels_message(caplog):
    logger = logging.getLogger(BNB_CPU_LOGGER)
    with caplog.at_level(logging.WARNING, logger=BNB_CPU_LOGGER):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you "
                       "already `pip install kernels` and the kernels >= 0.11.1", "No module named 'kernels'")
        logger.warning("something else went wrong")
    assert [record.getMessage() for record in caplog.records] == ["something else went wrong"]


# Prevents: 12 copies of Jupyter's "Kernel is running over TCP without encryption" between make course's progress
# bar and its summary table.
@pytest.mark.slow
def test_course_runs_a_notebook_without_kernel_warnings(tmp_path, capfd):
    notebook = tmp_path / "lesson.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")]), notebook)
    result = course.execute(notebook, tmp_path / "out" / "lesson.ipynb")
    out, err = capfd.readouterr()
    assert result.ok, result.error
    assert "without encryption" not in out + err and "WARNING" not in out + err
    executed = nbformat.read(tmp_path / "out" / "lesson.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "42\n"


# Prevents: two course runs at once (make course beside make test, or two notebooks refreshed in parallel) picking
# the same IPC socket files: each side's kernels then reject the other's messages ("Invalid Signature") and hang.
@pytest.mark.slow
def test_two_course_runs_at_once_each_talk_to_their_own_kernels(tmp_path):
    runs = []
    for name in ("a", "b"):
        notebook = tmp_path / f"{name}.ipynb"
        cells = [nbformat.v4.new_code_cell("import time; time.sleep(2); print(6 * 7)") for _ in range(3)]
        nbformat.write(nbformat.v4.new_notebook(cells=cells), notebook)
        runs.append(subprocess.Popen([sys.executable, "-m", "helpers.course", "run", "--in-place", str(notebook)],
                                     cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert not any("Invalid Signature" in out for out in outputs)

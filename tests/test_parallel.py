"""Notebooks run side by side (pytest -n 2 over notebooks/) wait for each other's adapters instead of colliding."""

import subprocess
import sys

import pytest

from helpers.paths import REPO_ROOT, one_at_a_time

HOLD = """
import sys, time
from pathlib import Path
from helpers.paths import one_at_a_time
folder = Path(sys.argv[1])
with one_at_a_time(folder):
    print("holding", flush=True)
    time.sleep(1.5)
    folder.mkdir()
    (folder / "done").write_text("ok")
"""


def test_a_second_process_waits_until_the_first_has_written_the_folder(tmp_path, capsys):
    # Prevents: lesson 07 reading (or training again) the tang adapter while lesson 04, run beside it, writes it.
    folder = tmp_path / "adapter"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "holding"
    with one_at_a_time(folder):
        assert (folder / "done").is_file()
    assert holder.wait(timeout=30) == 0
    assert "waiting for another process" in capsys.readouterr().out


def test_the_lock_is_free_again_after_an_error(tmp_path, capsys):
    folder = tmp_path / "merged"
    with pytest.raises(RuntimeError), one_at_a_time(folder):
        raise RuntimeError("training failed")
    with one_at_a_time(folder):  # taken at once (its first, non-blocking try), not after waiting
        pass
    assert "waiting for another process" not in capsys.readouterr().out

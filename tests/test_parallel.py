"""Notebooks run side by side (pytest -n 2 over notebooks/) wait for each other's adapters instead of colliding."""

import subprocess
import sys
import time

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


def test_two_workers_starting_at_once_convert_the_tiny_model_once(tmp_path, monkeypatch):
    # Prevents: both pytest workers (or two notebooks) on an empty cache each spending ~40 s converting the same GGUF.
    from concurrent.futures import ThreadPoolExecutor

    from helpers import tiny_model
    from helpers.paths import is_complete

    conversions = []

    def slow_convert(source, work):
        conversions.append(work)
        time.sleep(0.5)  # long enough for the second worker to arrive while the first converts
        (work / "config.json").write_text("{}")

    monkeypatch.setattr(tiny_model, "models_dir", lambda: tmp_path)
    monkeypatch.setattr(tiny_model, "gguf_path", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(tiny_model, "convert_gguf", slow_convert)
    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: tiny_model.ensure_tiny_model(), range(2)))
    assert len(conversions) == 1
    assert folders[0] == folders[1] and is_complete(folders[0]) and (folders[0] / "config.json").is_file()

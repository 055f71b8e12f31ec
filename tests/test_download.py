import time
from collections import namedtuple
from pathlib import Path

import pytest

from helpers import download
from helpers.download import DownloadError, Source, download_model, local_folder_name
from helpers.paths import CACHE_ENV, COMPLETE_MARKER
from helpers.profiles import get_profile
from helpers.tiny_model import ensure_tiny_model

GPU = get_profile("gpu")
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
DEAD_PORT = "http://127.0.0.1:9"  # nothing listens on the discard port here: connection refused


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def reachable(monkeypatch):
    """Every probe succeeds: for tests whose sources are fakes."""
    monkeypatch.setattr(download, "probe", lambda url: None)


def fake_source(name, calls, fail=None, files=("config.json", "model.safetensors")):
    def fetch(model_id, target: Path):
        calls.append((name, model_id, sorted(p.name for p in target.glob("*")) if target.exists() else None))
        if fail:
            raise fail
        target.mkdir(parents=True, exist_ok=True)
        for file in files:
            (target / file).write_text("x")

    return Source(name, lambda: "local", fetch)


def test_offline_download_fails_fast_and_names_every_source(monkeypatch):
    # Prevents: a student waiting minutes for a dead hub, then a traceback that says nothing.
    monkeypatch.setenv("HF_ENDPOINT", DEAD_PORT)
    monkeypatch.setattr(download, "MODELSCOPE_URL", DEAD_PORT)
    start = time.perf_counter()
    with pytest.raises(DownloadError) as failure:
        download_model(MODEL, profile=GPU, sources=(
            Source("ModelScope", lambda: download.MODELSCOPE_URL, download.fetch_modelscope),
            Source("Hugging Face", download.hf_endpoint, download.fetch_huggingface),
        ))
    assert time.perf_counter() - start < 10
    message = str(failure.value)
    assert "ModelScope" in message and "Hugging Face" in message
    assert "HF_ENDPOINT" in message and "COURSE_PROFILE=tiny" in message


def test_real_hub_clients_fail_within_bounded_time(monkeypatch):
    # The probe says "reachable", so the real modelscope / huggingface_hub calls run and fail.
    monkeypatch.setattr(download, "probe", lambda url: None)
    monkeypatch.setenv("HF_ENDPOINT", DEAD_PORT)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", DEAD_PORT)
    start = time.perf_counter()
    with pytest.raises(DownloadError) as failure:
        download_model(MODEL, profile=GPU)
    assert time.perf_counter() - start < 30
    message = str(failure.value)
    assert message.count("Error") >= 2 and "ModelScope:" in message and "Hugging Face:" in message


def test_first_source_wins_and_marks_the_folder_complete(isolated_cache, reachable):
    calls = []
    path = download_model(MODEL, profile=GPU, sources=(fake_source("a", calls), fake_source("b", calls)))
    assert path == isolated_cache / "models" / local_folder_name(MODEL)
    assert (path / COMPLETE_MARKER).is_file()
    assert [c[0] for c in calls] == ["a"]


def test_falls_back_to_second_source(isolated_cache, reachable):
    calls = []
    sources = (fake_source("a", calls, fail=OSError("boom")), fake_source("b", calls))
    path = download_model(MODEL, profile=GPU, sources=sources)
    assert [c[0] for c in calls] == ["a", "b"] and (path / "config.json").exists()


def test_partial_folder_is_resumed_never_returned(isolated_cache, reachable):
    # Prevents: loading a model whose download died at 90 %.
    partial = isolated_cache / "models" / local_folder_name(MODEL)
    partial.mkdir(parents=True)
    (partial / "model-00001-of-00002.safetensors").write_text("half")
    calls = []
    with pytest.raises(DownloadError):
        download_model(MODEL, profile=GPU, sources=(fake_source("a", calls, fail=OSError("offline")),))
    assert not (partial / COMPLETE_MARKER).exists()
    download_model(MODEL, profile=GPU, sources=(fake_source("a", calls),))
    assert calls[-1][2] == ["model-00001-of-00002.safetensors"]  # the fetch resumed into the same folder
    assert (partial / COMPLETE_MARKER).is_file()


def test_complete_folder_needs_no_network(isolated_cache, reachable):
    done = isolated_cache / "models" / local_folder_name(MODEL)
    done.mkdir(parents=True)
    (done / COMPLETE_MARKER).write_text("ok")
    calls = []
    assert download_model(MODEL, profile=GPU, sources=(fake_source("a", calls, fail=OSError()),)) == done
    assert calls == []


def test_local_path_is_used_as_is(tmp_path):
    assert download_model(str(tmp_path), profile=GPU, sources=()) == tmp_path


def test_not_enough_disk_space_fails_before_downloading(monkeypatch, reachable):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage(10, 9, 2**20))
    calls = []
    with pytest.raises(DownloadError, match="COURSE_CACHE"):
        download_model(MODEL, profile=GPU, sources=(fake_source("a", calls),))
    assert calls == []


def test_tiny_profile_is_offline(monkeypatch):
    # Prevents: the CI / offline course hanging on a hub it cannot reach.
    monkeypatch.delenv(CACHE_ENV)  # use the shared cache: the conversion runs once per machine
    monkeypatch.setattr(download, "probe", lambda url: pytest.fail("tiny profile touched the network"))
    tiny = get_profile("tiny")
    assert download_model(profile=tiny) == ensure_tiny_model()
    with pytest.raises(DownloadError, match="COURSE_PROFILE=gpu"):
        download_model(MODEL, profile=tiny)

import dataclasses
import socket
import threading
import time
from collections import namedtuple
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from fake_http import JSONHandler

from helpers import download
from helpers.download import DownloadError, Source, download_model, local_folder_name
from helpers.paths import CACHE_ENV, COMPLETE_MARKER
from helpers.profiles import get_profile
from helpers.tiny_model import ensure_tiny_model

GPU = get_profile("gpu")
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
DEAD_PORT = "http://127.0.0.1:9"  # nothing listens on the discard port here: connection refused
# A failing download must end in seconds, not minutes: probes and size queries time out after 3-5 s, while a hub that
# never answers would hold a cell for minutes. Measured idle: 0.2-6 s, modelscope's own retries ~24 s. The bounds sit
# far above both, so a busy CI runner cannot break them, and far below a real hang.
FAIL_FAST_S = 60
MODELSCOPE_RETRIES_S = 120

pytestmark = pytest.mark.usefixtures("isolated_cache")  # downloads never reach the real cache


def fake_source(name, calls, fail=None, files=("config.json", "model.safetensors")):
    def fetch(model_id, target: Path):
        calls.append((name, model_id, sorted(p.name for p in target.glob("*")) if target.exists() else None))
        if fail:
            raise fail
        target.mkdir(parents=True, exist_ok=True)
        for file in files:
            (target / file).write_text("x")

    return Source(name, lambda: "local", fetch)


@pytest.mark.slow
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
    assert time.perf_counter() - start < FAIL_FAST_S
    message = str(failure.value)
    assert "ModelScope" in message and "Hugging Face" in message
    assert "HF_ENDPOINT" in message and "COURSE_PROFILE=tiny" in message


@pytest.mark.slow
def test_real_hub_clients_fail_within_bounded_time(monkeypatch):
    # The probe says "reachable", so the real modelscope / huggingface_hub calls run and fail.
    monkeypatch.setattr(download, "probe", lambda url: None)
    monkeypatch.setenv("HF_ENDPOINT", DEAD_PORT)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", DEAD_PORT)
    start = time.perf_counter()
    with pytest.raises(DownloadError) as failure:
        download_model(MODEL, profile=GPU)
    assert time.perf_counter() - start < MODELSCOPE_RETRIES_S
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


@pytest.fixture
def hanging_hub():
    """A host that accepts connections and never answers (a firewall or a throttled hub, as often seen in China)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


class FakeHub(JSONHandler):
    """Answers the two size queries like the real hubs do; an unknown model gets 404."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path.startswith("/api/v1/models/org/known/repo/files"):  # ModelScope
            body = {"Code": 200, "Data": {"Files": [{"Type": "blob", "Size": 300}, {"Type": "tree", "Size": 0},
                                                     {"Type": "blob", "Size": 700}]}}
        elif self.path.startswith("/api/models/org/known"):  # Hugging Face (files_metadata: blobs=True)
            body = {"id": "org/known", "siblings": [{"rfilename": "a", "size": 400}, {"rfilename": "b", "size": 600}]}
        else:
            self.send_error(404)
            return
        self.send_json(200, body)


@pytest.fixture
def fake_hub(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", url)
    yield url
    server.shutdown()


@pytest.mark.parametrize("source", download.SOURCES, ids=lambda s: s.name)
@pytest.mark.parametrize("hub", ["refused", "unresolvable", "hanging"])
@pytest.mark.slow
def test_each_source_fails_fast(monkeypatch, hanging_hub, source, hub):
    # Prevents: a notebook cell hanging for minutes (or forever: huggingface_hub waits on a silent host) offline.
    url = {"refused": DEAD_PORT, "unresolvable": "http://hub.invalid", "hanging": hanging_hub}[hub]
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", url)
    start = time.perf_counter()
    with pytest.raises(DownloadError, match=f"{source.name}: .+") as failure:
        download_model(MODEL, profile=GPU, sources=(source,))
    assert time.perf_counter() - start < FAIL_FAST_S, str(failure.value)


def test_size_queries_read_what_the_hubs_report(fake_hub):
    # Prevents: a wrong free-space verdict from a misread file list (directories counted, sizes missed).
    assert download.modelscope_size("org/known") == 1000
    assert download.huggingface_size("org/known") == 1000
    assert download.modelscope_size("org/missing") is None  # the hub cannot tell: the 2 GiB floor applies
    assert download.huggingface_size("org/missing") is None


def fake_disk(monkeypatch, free_gib: float) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage(2**40, 0, int(free_gib * 2**30)))


def test_hub_reported_size_is_checked_before_the_fetch(monkeypatch, reachable):
    # Prevents: a 15 GB download dying at 90 % on a 10 GB disk (the system disk of an AutoDL instance).
    fake_disk(monkeypatch, free_gib=10)
    calls = []
    big = dataclasses.replace(fake_source("a", calls), size=lambda model_id: 15 * 2**30)
    with pytest.raises(DownloadError, match=r"10.0 GB free .* 16.5 GB needed.*COURSE_CACHE"):
        download_model(MODEL, profile=GPU, sources=(big, fake_source("b", calls)))
    assert calls == []  # neither source fetched, and the disk error was not hidden behind "every source failed"


def test_size_falls_back_to_the_floor_and_counts_a_partial_download(monkeypatch, reachable):
    fake_disk(monkeypatch, free_gib=3)
    calls = []
    unknown = dataclasses.replace(fake_source("a", calls), size=lambda model_id: None)
    download_model(MODEL, profile=GPU, sources=(unknown,))  # hub cannot tell: 3 GiB free passes the 2 GiB floor
    assert [c[0] for c in calls] == ["a"]
    monkeypatch.setattr(download, "bytes_present", lambda folder: 2 * 2**30)  # 2 GiB already downloaded
    resumed = dataclasses.replace(fake_source("b", calls), size=lambda model_id: 4 * 2**30)
    download_model("org/other", profile=GPU, sources=(resumed,))  # 4.4 GiB - 2 GiB present fits in 3 GiB
    assert [c[0] for c in calls] == ["a", "b"]

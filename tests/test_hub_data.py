import json
import time
from dataclasses import replace

import pytest

from helpers import download, hub_data
from helpers.download import DownloadError, Source
from helpers.hub_data import FULL_DATASETS, course_conversations, download_full_dataset, full_dataset_path
from helpers.paths import COMPLETE_MARKER
from helpers.profiles import get_profile

GPU, TINY = get_profile("gpu"), get_profile("tiny")
DEAD_PORT = "http://127.0.0.1:9"  # nothing listens on the discard port here: connection refused
ROWS = [{"instruction": f"问题 {i}", "output": f"回答 {i} 喵~"} for i in range(30)]
ROWS_TEXT = json.dumps(ROWS, ensure_ascii=False)
FAIL_FAST_S = 60  # seconds per source: far above the 3-5 s timeouts on a busy runner, far below a hang (test_download)

pytestmark = pytest.mark.usefixtures("isolated_cache")  # downloads never reach the real cache


def fake_source(name, calls, text=ROWS_TEXT, fail=None):
    def fetch(file_name, folder):
        calls.append(name)
        if fail:
            raise fail
        folder.mkdir(parents=True, exist_ok=True)
        (folder / file_name).write_text(text, encoding="utf-8")

    return Source(name, lambda: "local", fetch)


def with_sources(monkeypatch, lesson, *sources):
    monkeypatch.setitem(FULL_DATASETS, lesson, replace(FULL_DATASETS[lesson], sources=sources))


def test_first_good_source_is_checked_marked_and_reused(reachable):
    calls = []
    path = download_full_dataset("nekoqa", (fake_source("a", calls), fake_source("b", calls)))
    assert path == full_dataset_path("nekoqa") and path.name == "NekoQA-10K.json"
    assert (path.parent / COMPLETE_MARKER).is_file() and calls == ["a"]
    assert download_full_dataset("nekoqa", (fake_source("c", calls, fail=OSError("offline")),)) == path
    assert calls == ["a"]  # reused without touching any source


def test_gpu_profile_trains_on_the_full_set_and_evaluates_on_the_shipped_one(monkeypatch, reachable):
    with_sources(monkeypatch, "nekoqa", fake_source("hub", []))
    train = course_conversations("nekoqa", "train", profile=GPU)
    assert [c[-2]["content"] for c in train] == [row["instruction"] for row in ROWS]
    assert course_conversations("nekoqa", "eval", profile=GPU) == course_conversations("nekoqa", "eval", profile=TINY)


def test_held_out_questions_are_dropped_from_a_full_set(monkeypatch, reachable, capsys):
    # Prevents: scoring the model on rows it trained on, when the public set happens to hold a held-out row.
    held_out = course_conversations("huanhuan", "eval", profile=TINY)[0]
    rows = [*ROWS, {"instruction": held_out[-2]["content"], "input": "", "output": "别的回答"}]
    with_sources(monkeypatch, "huanhuan", fake_source("hub", [], text=json.dumps(rows, ensure_ascii=False)))
    train = course_conversations("huanhuan", "train", profile=GPU)
    assert len(train) == len(ROWS) and "dropped 1" in capsys.readouterr().out


def test_every_source_failing_stops_with_what_to_do_including_the_shipped_rows(monkeypatch, reachable):
    # Prevents: a gpu-profile lesson silently training its full-data step count (7-70 passes) on the 160 shipped rows
    # when the hub is out of reach.
    calls = []
    with_sources(monkeypatch, "tang", fake_source("GitHub", calls, fail=OSError("boom")),
                 fake_source("jsDelivr", calls, fail=TimeoutError("slow")))
    with pytest.raises(DownloadError) as failure:
        course_conversations("tang", "train", profile=GPU)
    out = str(failure.value)
    assert calls == ["GitHub", "jsDelivr"]
    assert "GitHub: OSError: boom" in out and "jsDelivr: TimeoutError: slow" in out and "GITHUB_RAW_ENDPOINT" in out
    assert "datasets/tang/Tang_training_data.json" in out  # where to put the file by hand
    assert "COURSE_SHIPPED_DATA=1" in out and "165 shipped rows" in out  # or rehearse on the shipped rows


def test_asking_for_the_shipped_rows_trains_on_them_for_at_most_three_passes(monkeypatch):
    # Prevents: the rehearsal touching the network, running 700 steps on 160 rows, or sharing the full run's adapter.
    monkeypatch.setattr(download, "probe", lambda url: pytest.fail("the shipped rows need no network"))
    monkeypatch.setenv("COURSE_SHIPPED_DATA", "1")
    shipped = get_profile("gpu")
    assert shipped.shipped_data and shipped.run_name == "gpu-shipped" and GPU.run_name == "gpu"
    assert course_conversations("huanhuan", "train", profile=shipped) == course_conversations(
        "huanhuan", "train", profile=TINY)
    for lesson, rows in (("nekoqa", 160), ("tang", 165), ("huanhuan", 160)):
        recipe, full = shipped.recipe(lesson), GPU.recipe(lesson)
        assert recipe.max_steps * recipe.rows_per_step <= 3 * rows + recipe.rows_per_step  # at most 3 passes
        assert recipe.max_steps < full.max_steps and recipe.learning_rate == full.learning_rate
        assert 1 <= recipe.save_steps <= recipe.max_steps and recipe.warmup_steps < recipe.max_steps
    assert shipped.recipe("huanhuan").max_steps == 30  # ceil(3 x 160 / 16), not 700
    assert shipped.recipe("nekoqa_dpo") == GPU.recipe("nekoqa_dpo")  # DPO's pairs are shipped in both
    assert get_profile("tiny").recipe("nekoqa") == TINY.recipe("nekoqa")  # the tiny profile ignores it


def test_a_file_failing_the_data_check_is_never_marked_complete(reachable):
    calls = []
    broken = fake_source("bad", calls, text='[{"instruction": "问题"}]')  # no output: not a training row
    with pytest.raises(DownloadError, match=r"bad: DataError: .*'output'"):
        download_full_dataset("nekoqa", (broken,))
    assert not (full_dataset_path("nekoqa").parent / COMPLETE_MARKER).exists()
    path = download_full_dataset("nekoqa", (broken, fake_source("good", calls)))
    assert calls == ["bad", "bad", "good"] and (path.parent / COMPLETE_MARKER).is_file()


def test_a_file_put_there_by_hand_is_used_offline(monkeypatch):
    monkeypatch.setattr(download, "probe", lambda url: pytest.fail("a valid local file needs no network"))
    path = full_dataset_path("huanhuan")
    path.parent.mkdir(parents=True)
    path.write_text(ROWS_TEXT, encoding="utf-8")
    assert download_full_dataset("huanhuan") == path and (path.parent / COMPLETE_MARKER).is_file()


def test_the_tiny_profile_never_touches_the_network(monkeypatch):
    monkeypatch.setattr(download, "probe", lambda url: pytest.fail("tiny profile touched the network"))
    assert len(course_conversations("nekoqa", "train", profile=TINY)) == 160


@pytest.mark.slow
def test_real_sources_at_a_refused_port_fail_fast(monkeypatch):
    # Prevents: an offline gpu-profile lesson hanging on unreachable hosts before it falls back.
    monkeypatch.setenv("HF_ENDPOINT", DEAD_PORT)
    monkeypatch.setenv("GITHUB_RAW_ENDPOINT", DEAD_PORT)
    monkeypatch.setattr(hub_data, "JSDELIVR_URL", DEAD_PORT)
    for lesson, names in {"nekoqa": ["Hugging Face"], "tang": ["GitHub", "jsDelivr"],
                          "huanhuan": ["GitHub", "jsDelivr"]}.items():
        start = time.perf_counter()
        with pytest.raises(DownloadError) as failure:
            course_conversations(lesson, "train", profile=GPU)
        assert time.perf_counter() - start < FAIL_FAST_S * len(names)
        assert all(f"{name}: 127.0.0.1:9 不可达 unreachable" in str(failure.value) for name in names)


@pytest.mark.slow
def test_real_github_client_fails_fast_when_the_probe_passes(monkeypatch):
    # The probe says "reachable", so urllib itself runs against the refused port.
    monkeypatch.setattr(download, "probe", lambda url: None)
    monkeypatch.setenv("GITHUB_RAW_ENDPOINT", DEAD_PORT)
    monkeypatch.setattr(hub_data, "JSDELIVR_URL", DEAD_PORT)
    start = time.perf_counter()
    with pytest.raises(DownloadError) as failure:
        download_full_dataset("huanhuan")
    assert time.perf_counter() - start < FAIL_FAST_S
    assert str(failure.value).count("URLError") == 2


def test_github_files_are_fetched_at_their_pinned_commit(monkeypatch, tmp_path):
    # Prevents: students training on whatever the default branch holds today (rows change, results drift).
    urls = []
    monkeypatch.setattr(hub_data, "fetch_url", lambda url, target: urls.append(url))
    for lesson, commit in (("tang", hub_data.TANG_COMMIT), ("huanhuan", hub_data.HUANHUAN_COMMIT)):
        spec = FULL_DATASETS[lesson]
        for source in spec.sources:
            source.fetch(spec.file_name, tmp_path)
        assert len(commit) == 40 and commit in spec.page
    assert len(urls) == 4 and all(hub_data.TANG_COMMIT in u or hub_data.HUANHUAN_COMMIT in u for u in urls)
    assert urls[1] == f"{hub_data.JSDELIVR_URL}/gh/CheeEn-Yu/GenAI-Hw5@{hub_data.TANG_COMMIT}/Tang_training_data.json"

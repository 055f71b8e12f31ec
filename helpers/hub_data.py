"""The rows each lesson uses (``course_conversations``), and the gpu profile's full training sets behind them.

The full sets are fetched once into ``<course cache>/datasets/<lesson>/``:

- NekoQA-10K: Hugging Face data set ``liumindmind/NekoQA-10K`` (or the ``HF_ENDPOINT`` mirror);
- Tang poems (NTU GenAI 2024 HW5): ``Tang_training_data.json`` in github.com/CheeEn-Yu/GenAI-Hw5;
- Huanhuan: ``dataset/huanhuan.json`` in github.com/datawhalechina/self-llm.

The GitHub files are pinned to a commit, so every student trains on the same rows (a commit id fixes the
file's content, as a checksum would). NekoQA-10K follows the Hugging Face repository's ``main`` revision.

GitHub files come from GitHub's raw server (or ``GITHUB_RAW_ENDPOINT``), then from the jsDelivr CDN.
The loop is the model download's (``helpers.download.fetch_first``): each source is probed first, so an
offline machine fails in seconds, and a file counts only once it passed the course's data check.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from helpers.data import DataError, load_conversations, shipped_row_count
from helpers.download import DownloadError, Source, check_free_space, fetch_first, tried_lines
from helpers.net import SUGGESTED_MIRROR, hf_endpoint
from helpers.paths import cache_root, display_path, is_complete, mark_complete
from helpers.profiles import SHIPPED_DATA_ENV, SHIPPED_EPOCHS, Profile, get_profile
from helpers.registry import LESSONS
from helpers.splits import drop_held_out, shipped_conversations
from helpers.templates import Message

GITHUB_RAW_ENV = "GITHUB_RAW_ENDPOINT"
GITHUB_RAW_URL = "https://raw.githubusercontent.com"
JSDELIVR_URL = "https://cdn.jsdelivr.net"
READ_TIMEOUT_S = 60  # per read once connected; whether the host answers at all was probed (seconds) before
DATA_MIN_FREE_BYTES = 2**28  # 256 MiB; the largest file is a few MB


def github_raw_endpoint() -> str:
    """GitHub's raw file server, or ``$GITHUB_RAW_ENDPOINT``: a mirror with the same paths, or a proxy prefix."""
    return os.environ.get(GITHUB_RAW_ENV, "").rstrip("/") or GITHUB_RAW_URL


def fetch_url(url: str, target: Path) -> None:
    """Stream ``url`` into the file ``target`` (urllib honours the usual proxy variables)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as response, target.open("wb") as out:
        shutil.copyfileobj(response, out)


def huggingface_file(repo_id: str) -> Source:
    """A file of a Hugging Face data set repository, through ``HF_ENDPOINT`` when it is set."""

    def fetch(file_name: str, folder: Path) -> None:
        from huggingface_hub import hf_hub_download

        hf_hub_download(repo_id, file_name, repo_type="dataset", local_dir=folder, endpoint=hf_endpoint())

    return Source("Hugging Face", hf_endpoint, fetch)


def github_file(repo: str, ref: str, directory: str = "") -> tuple[Source, Source]:
    """A file of a GitHub repository: GitHub's raw server (or its mirror), then the jsDelivr CDN."""

    def raw(file_name: str, folder: Path) -> None:
        fetch_url(f"{github_raw_endpoint()}/{repo}/{ref}/{directory}{file_name}", folder / file_name)

    def cdn(file_name: str, folder: Path) -> None:
        fetch_url(f"{JSDELIVR_URL}/gh/{repo}@{ref}/{directory}{file_name}", folder / file_name)

    return Source("GitHub", github_raw_endpoint, raw), Source("jsDelivr", lambda: JSDELIVR_URL, cdn)


@dataclass(frozen=True)
class FullDataset:
    """A lesson's full training set: its file name, the page to get it by hand, a mirror tip, the sources."""

    file_name: str
    page: str
    mirror_tip: str
    sources: tuple[Source, ...]


HF_MIRROR_TIP = f"export HF_ENDPOINT={SUGGESTED_MIRROR}"
GITHUB_MIRROR_TIP = f"export {GITHUB_RAW_ENV}=<镜像地址 / mirror URL>（替换 / replaces {GITHUB_RAW_URL}）"

TANG_COMMIT = "3a36a448833d5f568e3bf415c86ac1718352fc2e"  # commits that hold the files (their content is fixed)
HUANHUAN_COMMIT = "84c3486aeee22cd6585c21771924cd538a081295"

FULL_DATASETS: dict[str, FullDataset] = {
    "nekoqa": FullDataset("NekoQA-10K.json", "https://huggingface.co/datasets/liumindmind/NekoQA-10K",
                          HF_MIRROR_TIP, (huggingface_file("liumindmind/NekoQA-10K"),)),
    "tang": FullDataset("Tang_training_data.json", f"https://github.com/CheeEn-Yu/GenAI-Hw5/tree/{TANG_COMMIT}",
                        GITHUB_MIRROR_TIP, github_file("CheeEn-Yu/GenAI-Hw5", TANG_COMMIT)),
    "huanhuan": FullDataset("huanhuan.json", f"https://github.com/datawhalechina/self-llm/tree/{HUANHUAN_COMMIT}/dataset",
                            GITHUB_MIRROR_TIP, github_file("datawhalechina/self-llm", HUANHUAN_COMMIT, "dataset/")),
}


def full_dataset_path(lesson: str) -> Path:
    """Where the full training file of ``lesson`` lives (or is to be put by hand)."""
    return cache_root() / "datasets" / lesson / FULL_DATASETS[lesson].file_name


def check_file(path: Path, lesson: str) -> None:
    """The course's data check: every row must become a conversation, else a DataError names the row."""
    load_conversations(path, LESSONS[lesson].system)


def failure_message(lesson: str, file_name: str, attempts: list[tuple[str, str]]) -> str:
    """What was tried, and the two ways to get the file: a mirror, or putting it in place by hand."""
    spec = FULL_DATASETS[lesson]
    return (
        f"完整数据集 {file_name} 下载失败。已尝试 / Tried:\n{tried_lines(attempts)}\n"
        "怎么办 / What to do:\n"
        f"  1. 使用镜像 / use a mirror: {spec.mirror_tip}\n"
        f"  2. 或在能联网的机器上从 {spec.page} 下载 {file_name}，放到 {display_path(full_dataset_path(lesson))}，"
        "下次运行会先检查再使用它。\n"
        f"     Or download {file_name} from that page on a machine online and put it at that path: "
        "the next run checks it and uses it."
    )


def accepts_existing(path: Path, lesson: str) -> bool:
    """A file put in place by hand (or by a run stopped before its check) is used once it passes the check."""
    try:
        check_file(path, lesson)
    except DataError as error:
        print(f"{error}\n{display_path(path)} 未通过检查，重新下载 / failed the check, downloading it again")
        return False
    return True


def download_full_dataset(lesson: str, sources: tuple[Source, ...] | None = None) -> Path:
    """The full training file of ``lesson``: reused once complete, else fetched, checked and marked complete."""
    path = full_dataset_path(lesson)
    folder = path.parent
    if is_complete(folder):
        return path
    if path.is_file() and accepts_existing(path, lesson):
        mark_complete(folder)
        return path
    folder.mkdir(parents=True, exist_ok=True)
    check_free_space(folder, DATA_MIN_FREE_BYTES)
    fetch_first(path.name, folder, FULL_DATASETS[lesson].sources if sources is None else sources,
                partial(failure_message, lesson), verify=lambda target: check_file(target / path.name, lesson))
    return path


def full_training_file(lesson: str) -> Path:
    """The gpu profile's full training set of ``lesson``; when it cannot be had, a ``DownloadError`` that also says
    how to rehearse on the shipped rows instead (``COURSE_SHIPPED_DATA=1``)."""
    try:
        return download_full_dataset(lesson)
    except DownloadError as error:
        rows = shipped_row_count(lesson)
        raise DownloadError(
            f"{error}\n"
            f"  3. 或者先用课程自带的 {rows} 行把流程走一遍（步数按最多 {SHIPPED_EPOCHS} 遍自动减少，"
            "效果比完整数据弱）：在笔记本第一个单元格最前面加 "
            f"`import os; os.environ[\"{SHIPPED_DATA_ENV}\"] = \"1\"`，或 `export {SHIPPED_DATA_ENV}=1` 后"
            "重启 JupyterLab；这样训练出的适配器放在 `*-gpu-shipped` 下，不会被当成完整数据的结果。\n"
            f"     Or rehearse on the {rows} shipped rows (steps cut to at most {SHIPPED_EPOCHS} passes, "
            f"weaker results): set {SHIPPED_DATA_ENV}=1 (first cell, or export it and restart JupyterLab); "
            "the adapter goes under `*-gpu-shipped`, apart from full-data runs."
        ) from None


def course_conversations(lesson: str, split: str, limit: int | None = None,
                         profile: Profile | None = None) -> list[list[Message]]:
    """A course data set as conversations; ``split`` is ``train`` or ``eval`` (the shipped held-out file).

    ``train`` is the shipped file in the tiny profile and the full public set in the gpu profile (downloaded as
    above; the shipped file with ``COURSE_SHIPPED_DATA=1``), without held-out questions.
    """
    profile = profile or get_profile()
    if split == "eval" or profile.is_tiny or profile.shipped_data:
        conversations = shipped_conversations(lesson, split)
    else:
        full = load_conversations(full_training_file(lesson), LESSONS[lesson].system)
        conversations = drop_held_out(full, shipped_conversations(lesson, "eval"))
    return conversations[:limit] if limit else conversations

"""Model download: ModelScope first, then the Hugging Face hub (or the ``HF_ENDPOINT`` mirror).

A folder counts as downloaded only once a marker file is written after the last file
arrived; an interrupted download is resumed by the next call, never loaded half-done.
The tiny profile never touches the network: it returns the converted SmolLM2 folder.
``fetch_first`` is the fallback loop that the full data sets (``helpers.hub_data``) share.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from helpers.models import gated_hint, hub_ids, require_chat_template
from helpers.net import MODELSCOPE_URL, SUGGESTED_MIRROR, hf_endpoint, probe
from helpers.paths import display_path, is_complete, mark_complete, models_dir
from helpers.profiles import TINY_MODEL_ID, Profile, get_profile
from helpers.tiny_model import ensure_tiny_model

MIN_FREE_BYTES = 2 * 2**30  # refuse to start a download with less than 2 GiB free
SIZE_TIMEOUT_S = 5.0  # a hub that accepts the connection but does not answer its file list fails in seconds


class DownloadError(RuntimeError):
    """Every source failed; the message lists what was tried and how to fix it."""


@dataclass(frozen=True)
class Source:
    """A place to download from: its name, the URL probed first, the fetch function, and a size query."""

    name: str
    url: Callable[[], str]
    fetch: Callable[[str, Path], None]
    size: Callable[[str], int | None] | None = None  # bytes of an item; None: cannot tell; raises: no answer


def modelscope_endpoint() -> str:
    """The ModelScope endpoint: ``$MODELSCOPE_ENDPOINT`` (the modelscope library reads it too) or the main site."""
    return os.environ.get("MODELSCOPE_ENDPOINT", "").rstrip("/") or MODELSCOPE_URL


def total_size(sizes) -> int | None:
    """The sum of the reported file sizes, or None when the hub reported none."""
    known = [size for size in sizes if isinstance(size, int)]
    return sum(known) if known else None


def modelscope_size(model_id: str) -> int | None:
    """The model's total size from ModelScope's file list (the API its own client uses)."""
    url = f"{modelscope_endpoint()}/api/v1/models/{model_id}/repo/files?Revision=master&Recursive=True"
    try:
        with urllib.request.urlopen(url, timeout=SIZE_TIMEOUT_S) as response:
            reply = json.load(response)
    except (urllib.error.HTTPError, ValueError):  # unknown model, or not JSON: the fetch tells why
        return None
    data = reply.get("Data") if isinstance(reply, dict) else None
    files = data.get("Files") if isinstance(data, dict) else None
    return total_size(f.get("Size") for f in files or () if isinstance(f, dict) and f.get("Type") != "tree")


def huggingface_size(model_id: str) -> int | None:
    """The model's total size as the Hugging Face hub (or the ``HF_ENDPOINT`` mirror) reports it."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi(endpoint=hf_endpoint()).model_info(model_id, files_metadata=True, timeout=SIZE_TIMEOUT_S)
    except HfHubHTTPError:  # unknown or gated model, or a mirror without this API: the fetch tells why
        return None
    return total_size(sibling.size for sibling in info.siblings or ())


def fetch_modelscope(model_id: str, target: Path) -> None:
    from modelscope import snapshot_download

    snapshot_download(model_id, local_dir=str(target))


def fetch_huggingface(model_id: str, target: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(model_id, local_dir=str(target), endpoint=hf_endpoint())


SOURCES: tuple[Source, ...] = (
    Source("ModelScope", modelscope_endpoint, fetch_modelscope, modelscope_size),
    Source("Hugging Face", hf_endpoint, fetch_huggingface, huggingface_size),
)


def local_folder_name(model_id: str) -> str:
    return model_id.replace("/", "--")


def check_free_space(folder: Path, needed: int = MIN_FREE_BYTES) -> None:
    """Fail before downloading, not at 90 %, when the disk is too small."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DownloadError(
            f"磁盘空间不足：{display_path(folder)} 仅剩 {free / 2**30:.1f} GB，至少需要 {needed / 2**30:.1f} GB。"
            "请清理空间，或用环境变量 COURSE_CACHE 指到数据盘（AutoDL：/root/autodl-tmp）。\n"
            f"Not enough disk space: {free / 2**30:.1f} GB free in {display_path(folder)}, "
            f"{needed / 2**30:.1f} GB needed. Free some space or point COURSE_CACHE to a data disk."
        )


def bytes_present(folder: Path) -> int:
    """Bytes an interrupted download already left in ``folder`` (they are resumed, not fetched again)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def check_space_for(source: Source, item: str, target: Path) -> None:
    """When ``source`` reports the item's size, fail unless the disk holds what is still missing (plus 10 %)."""
    size = source.size(item) if source.size else None
    if size is not None:
        check_free_space(target.parent, int(size * 1.1) - bytes_present(target))


def tried_lines(attempts: list[tuple[str, str]]) -> str:
    """One line per source tried: its name and why it failed."""
    return "\n".join(f"  - {name}: {reason}" for name, reason in attempts)


def failure_message(model_id: str, attempts: list[tuple[str, str]]) -> str:
    gated = gated_hint(model_id)
    return (
        f"模型 {model_id} 下载失败。已尝试 / Tried:\n{tried_lines(attempts)}\n"
        "怎么办 / What to do:\n" + (f"{gated}\n" if gated else "") +
        "  1. 检查模型名是否正确（ModelScope 与 Hugging Face 上的名字可能不同）/ check the model name on each hub;\n"
        f"  2. 国内访问 Hugging Face：export HF_ENDPOINT={SUGGESTED_MIRROR} / use the mirror;\n"
        "  3. 在能联网的机器上下载后，把本地文件夹路径传给 download_model / pass a local folder instead;\n"
        "  4. 只想离线学习流程：COURSE_PROFILE=tiny / to learn offline, use the tiny profile."
    )


def download_model(
    model_id: str | None = None,
    profile: Profile | None = None,
    sources: tuple[Source, ...] = SOURCES,
) -> Path:
    """Return a local folder holding ``model_id`` (default: the profile's model); a chat model, or ModelChoiceError.

    A model of the course's table (``helpers.models``) is asked for by its ModelScope id on ModelScope and by its
    Hugging Face id on Hugging Face.
    """
    profile = profile or get_profile()
    model_id = model_id or profile.model_id
    local = Path(model_id).expanduser()
    if local.is_dir():
        require_chat_template(local, model_id)
        return local
    if profile.is_tiny:
        if model_id == TINY_MODEL_ID:
            return ensure_tiny_model()
        raise DownloadError(
            f"tiny 配置离线运行，只提供 {TINY_MODEL_ID}，本地也没有文件夹 {model_id!r}。"
            "请传入本地模型路径，或设 COURSE_PROFILE=gpu 以联网下载。\n"
            f"The tiny profile is offline and only has {TINY_MODEL_ID}; {model_id!r} is not a local folder. "
            "Pass a local path, or set COURSE_PROFILE=gpu to download."
        )
    target = models_dir() / local_folder_name(model_id)
    if not is_complete(target):
        check_free_space(target.parent)  # the floor; each hub's reported size is checked before its fetch
        fetch_first(model_id, target, sources, failure_message, aliases=hub_ids(model_id))
    require_chat_template(target, model_id)
    return target


def fetch_first(
    item: str,
    target: Path,
    sources: tuple[Source, ...],
    failure: Callable[[str, list[tuple[str, str]]], str],
    verify: Callable[[Path], object] = lambda target: None,
    aliases: dict[str, str] | None = None,
) -> Path:
    """Fetch ``item`` into ``target`` from the first source that answers the probe and passes ``verify``.

    ``aliases``: the name a source knows the item by, by source name, where it is not ``item``.

    ``target`` is marked complete only after that; otherwise DownloadError carries ``failure(item, attempts)``.
    """
    attempts: list[tuple[str, str]] = []
    for source in sources:
        unreachable = probe(source.url())
        if unreachable:
            attempts.append((source.name, unreachable))
            continue
        try:
            name = (aliases or {}).get(source.name, item)
            check_space_for(source, name, target)  # the size query also bounds a hub that connects but hangs
            source.fetch(name, target)  # resumes whatever an interrupted run left in target
            verify(target)
        except DownloadError:  # not enough disk space: no other source can help
            raise
        except Exception as error:  # each hub raises its own exception types
            attempts.append((source.name, f"{error.__class__.__name__}: {str(error)[:300]}"))
            continue
        mark_complete(target)
        return target
    raise DownloadError(failure(item, attempts))

"""Reachability of the model hubs, with short timeouts so an offline machine fails fast; local calls skip proxies."""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlsplit

MODELSCOPE_URL = "https://www.modelscope.cn"
HUGGINGFACE_URL = "https://huggingface.co"
SUGGESTED_MIRROR = "https://hf-mirror.com"
PROBE_TIMEOUT_S = 3.0
# This machine's own addresses: a proxy (AutoDL's `source /etc/network_turbo` sets http_proxy) cannot reach them.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0")


def hf_endpoint() -> str:
    """The Hugging Face endpoint in use: ``$HF_ENDPOINT`` (a mirror) or the main hub."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or HUGGINGFACE_URL


def _connect(host: str, port: int, timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout):
        pass


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Try a TCP connection to ``url``'s host; return None when reachable, else the reason.

    DNS look-ups ignore socket timeouts, so the attempt runs in a thread that we stop waiting for.
    """
    parts = urlsplit(url)
    host = parts.hostname or url
    port = parts.port or (443 if parts.scheme != "http" else 80)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(_connect, host, port, timeout).result(timeout=timeout + 0.5)
    except FutureTimeout:
        return f"{host}:{port} 超时 timed out after {timeout:.0f} s"
    except OSError as error:
        return f"{host}:{port} 不可达 unreachable ({error.__class__.__name__}: {error})"
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return None


def probe_all(urls: list[str], timeout: float = PROBE_TIMEOUT_S) -> dict[str, str | None]:
    """Probe several hosts in parallel: an offline machine answers in one timeout, not several."""
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        results = pool.map(lambda url: probe(url, timeout), urls)
        return dict(zip(urls, results, strict=True))


def bypass_proxy_for_local() -> None:
    """Add this machine's addresses to ``NO_PROXY`` / ``no_proxy`` in this process and the processes it starts.

    ``source /etc/network_turbo`` on AutoDL sets ``http_proxy`` without a ``no_proxy``; urllib and httpx (the openai
    client, gradio) then send requests for ``127.0.0.1`` to the proxy, which cannot reach this machine's servers,
    and a local server looks dead. Hub downloads keep using the proxy.
    """
    current = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    hosts = [host.strip() for host in current.split(",") if host.strip()]
    merged = ",".join([*hosts, *(host for host in LOCAL_HOSTS if host not in hosts)])
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = merged

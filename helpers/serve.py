"""Serve a model folder through an OpenAI-compatible API with ``transformers serve``, and stop it again.

    with start_server(merged_dir("nekoqa", profile)) as server:      # transformers serve <folder> --port 8000
        client = OpenAI(base_url=server.base_url, api_key="EMPTY")
        client.chat.completions.create(model=server.model, messages=[...], **greedy_request(48))

The server is a subprocess writing to a log file. Before starting, the folder and the port are checked, so the two
usual mistakes fail at once with what to do; a server that dies while loading fails with its last log lines.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from helpers.generation import GREEDY
from helpers.net import bypass_proxy_for_local
from helpers.paths import display_path, outputs_dir
from helpers.ports import LOCAL_HOST, port_in_use, port_taken_message

DEFAULT_HOST = LOCAL_HOST  # this machine only; 0.0.0.0 also listens on every network interface
DEFAULT_PORT = 8000  # transformers serve's own default
READY_TIMEOUT_S = 300.0  # loading a 7B model from a slow disk can take minutes; the tiny model takes seconds
LOG_TAIL_LINES = 20
# No update check on PyPI at start (a slow or closed network would delay it) and no hub look-ups: the folder is local.
SERVER_ENV = {"HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_OFFLINE": "1"}


class ServeError(RuntimeError):
    """The server could not start (folder missing, port taken, early exit, timeout); the message says what to do."""


def check_model_folder(folder: Path) -> None:
    """Raise ServeError unless ``folder`` is a saved transformers model (it has a ``config.json``)."""
    if (folder / "config.json").is_file():
        return
    raise ServeError(
        f"找不到模型文件夹 {display_path(folder)}（或其中没有 config.json）。合并后的模型由第 06 课生成，"
        f"也可以运行 helpers.merge.merge_lesson(lesson, profile)（没有适配器时先 train_lesson）。\n"
        f"Model folder {display_path(folder)} is missing (or has no config.json). Lesson 06 makes the merged model, "
        f"as does helpers.merge.merge_lesson(lesson, profile) (train_lesson first if there is no adapter)."
    )


def check_port(port: int, host: str = DEFAULT_HOST) -> None:
    """Raise ServeError when ``host:port`` is taken, naming the port, who may hold it and how to choose another."""
    if port_in_use(port, host):
        raise ServeError(port_taken_message(
            port, host, f"start_server(folder, port={port + 1}) / transformers serve ... --port {port + 1}"))


def serve_command(folder: Path, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> list[str]:
    """``transformers serve <folder> --host <host> --port <port>``, run by this Python (no PATH needed)."""
    return [sys.executable, "-m", "transformers.cli.transformers", "serve", str(folder),
            "--host", host, "--port", str(port)]


def greedy_request(max_tokens: int) -> dict:
    """Request fields that make transformers serve decode as ``generate(**GREEDY)`` does, at most ``max_tokens``.

    ``temperature=0`` is the OpenAI way to ask for greedy decoding; ``no_repeat_ngram_size`` has no OpenAI field, so
    it goes in transformers serve's own ``generation_config`` extension (a JSON string) through ``extra_body``.
    """
    config = {**GREEDY, "max_new_tokens": max_tokens}
    return {"max_tokens": max_tokens, "temperature": 0, "extra_body": {"generation_config": json.dumps(config)}}


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (empty when there is none yet)."""
    if not log.is_file():
        return ""
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@dataclass
class Server:
    """A running ``transformers serve`` subprocess; use it as a context manager, or call ``stop()``."""

    folder: Path
    host: str
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def base_url(self) -> str:
        """What the OpenAI client's ``base_url`` must be."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def model(self) -> str:
        """The ``model`` field requests must carry: the folder exactly as the server was started with it."""
        return str(self.folder)

    def healthy(self) -> bool:
        """Whether ``GET /health`` answers 200 (the model is loaded once it does)."""
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Wait until the server answers; ServeError with the log's last lines if it exits or times out first."""
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self.process.poll() is not None:
                code = self.process.returncode
                raise ServeError(
                    f"服务进程提前退出（退出码 {code}），日志 {display_path(self.log)} 的最后几行：\n"
                    f"The server exited early (exit code {code}); last lines of its log:\n{log_tail(self.log)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServeError(
                    f"服务在 {timeout_s:.0f} 秒内没有就绪，已停止；可以加大 timeout_s。日志的最后几行：\n"
                    f"The server was not ready within {timeout_s:.0f} s and was stopped; raise timeout_s. "
                    f"Last lines of its log ({display_path(self.log)}):\n{log_tail(self.log)}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """Ask the server to shut down (SIGTERM), and kill it if it has not within 10 seconds."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_server(folder: Path | str, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST,
                 timeout_s: float = READY_TIMEOUT_S, log: Path | None = None) -> Server:
    """Start ``transformers serve`` on ``folder`` and return once it answers (the log goes to ``log``)."""
    folder = Path(folder)
    check_model_folder(folder)
    check_port(port, host)
    log = log or outputs_dir("serve") / f"server-{port}.log"
    bypass_proxy_for_local()  # the readiness check and the openai client talk to this machine, never via a proxy
    with open(log, "w", encoding="utf-8") as output:  # the child keeps its own copy of the file descriptor
        process = subprocess.Popen(serve_command(folder, port, host), stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env={**os.environ, **SERVER_ENV})
    server = Server(folder, host, port, process, log)
    atexit.register(server.stop)  # a script or kernel that ends without stop() does not leave the server behind
    try:
        server.wait_ready(timeout_s)
    except BaseException:  # also on Ctrl+C / a notebook interrupt while waiting
        server.stop()
        raise
    return server

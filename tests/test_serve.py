"""Lesson 11's server: transformers serve answers the official openai client as greedy generate does; clear errors.

One real server (the tiny model on a free port) for the one test that needs it: 10-30 s to start on 2 cores.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from helpers import serve
from helpers.generation import GREEDY
from helpers.ports import free_port, port_in_use
from helpers.serve import ServeError, greedy_request, start_server

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def tiny_folder():
    from helpers.tiny_model import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="module")
def server(tiny_folder, tmp_path_factory):
    with start_server(tiny_folder, port=free_port(), timeout_s=180,
                      log=tmp_path_factory.mktemp("serve") / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0, timeout=120)


# Prevents: an API that answers with another template or other decoding than the course's own generate.
@pytest.mark.slow
def test_api_reply_equals_greedy_generate_and_streams_the_same_text(server, client, tiny_folder, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from helpers.generation import generate_replies

    reply = client.chat.completions.create(model=server.model, messages=MESSAGES, **greedy_request(MAX_TOKENS))
    text = reply.choices[0].message.content
    model = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype="float32")
    assert text == generate_replies(model, tiny_tokenizer, [MESSAGES], MAX_TOKENS)[0]
    assert text.strip()
    prompt = tiny_tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)
    assert reply.usage.prompt_tokens == len(prompt["input_ids"])  # the folder's chat template, default system
    assert reply.usage.completion_tokens <= MAX_TOKENS

    stream = client.chat.completions.create(model=server.model, messages=MESSAGES, stream=True,
                                            **greedy_request(MAX_TOKENS))
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == text


# Prevents: a second server on a taken port loading the whole model and then dying on "address already in use".
def test_taken_port_is_refused_before_starting_with_the_port_named(tiny_folder, monkeypatch):
    monkeypatch.setattr(serve.subprocess, "Popen", lambda *a, **k: pytest.fail("started a server on a taken port"))
    with socket.socket() as other:  # an earlier server, or any other program, listening on the port
        other.bind((serve.DEFAULT_HOST, 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ServeError) as error:
            start_server(tiny_folder, port=port)
    message = str(error.value)
    assert f"端口 {port} 已被占用" in message and f"Port {port} is already in use" in message
    assert f"--port {port + 1}" in message
    assert not port_in_use(free_port())


# Prevents: a cryptic traceback from deep inside from_pretrained when lesson 06 has not been run.
def test_missing_model_folder_says_which_lesson_makes_it(tmp_path):
    with pytest.raises(ServeError) as error:
        start_server(tmp_path / "merged" / "nekoqa-tiny", port=free_port())
    message = str(error.value)
    assert "找不到模型文件夹" in message and "is missing" in message
    assert "第 06 课" in message and "merge_lesson" in message


# Prevents: waiting out the whole timeout for a server that has already died, or an error without its reason.
@pytest.mark.slow
def test_server_that_exits_early_shows_its_last_log_lines(tiny_folder, tmp_path, monkeypatch):
    crash = [sys.executable, "-c", "import sys; print('loading...'); print('OSError: no weights here'); sys.exit(3)"]
    monkeypatch.setattr(serve, "serve_command", lambda *args: crash)
    log = tmp_path / "server.log"
    with pytest.raises(ServeError) as error:
        start_server(tiny_folder, port=free_port(), timeout_s=60, log=log)
    message = str(error.value)
    assert "提前退出" in message and "exited early (exit code 3)" in message
    assert "OSError: no weights here" in message


# Prevents: a server that never answers hanging the notebook, or being left running after the timeout.
@pytest.mark.slow
def test_server_not_ready_in_time_is_stopped_with_a_clear_message(tiny_folder, tmp_path, monkeypatch):
    hang = [sys.executable, "-c", "import time; print('still loading', flush=True); time.sleep(60)"]
    monkeypatch.setattr(serve, "serve_command", lambda *args: hang)
    started, popen = [], serve.subprocess.Popen

    def recording_popen(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(serve.subprocess, "Popen", recording_popen)
    with pytest.raises(ServeError) as error:
        start_server(tiny_folder, port=free_port(), timeout_s=1, log=tmp_path / "server.log")
    message = str(error.value)
    assert "1 秒内没有就绪" in message and "not ready within 1 s" in message and "still loading" in message
    assert started[0].poll() is not None  # stopped, not left behind


# Prevents: greedy_request drifting from the decoding that lessons 03-08 use (GREEDY), or dropping max_tokens.
def test_greedy_request_carries_the_course_decoding():
    request = greedy_request(7)
    assert request["max_tokens"] == 7 and request["temperature"] == 0
    assert json.loads(request["extra_body"]["generation_config"]) == {**GREEDY, "max_new_tokens": 7}


# A stand-in for transformers serve: /health and /v1/chat/completions, answered in JSON (tests/fake_http.py).
FAKE_SERVER = """
import sys
from http.server import HTTPServer
sys.path.insert(0, sys.argv[2])
from fake_http import JSONHandler

class Handler(JSONHandler):
    def do_GET(self):
        self.send_json(200 if self.path == "/health" else 404, {})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_json(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": "local reply"}}]})

HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


# Prevents: after AutoDL's `source /etc/network_turbo` (http_proxy, no no_proxy), the readiness check and the openai
# client sending 127.0.0.1 to the proxy, so a running local server times out.
@pytest.mark.slow
def test_local_server_is_reached_while_a_dead_proxy_is_set(tiny_folder, tmp_path, monkeypatch):
    from openai import OpenAI

    dead_proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    tests = str(Path(__file__).parent)
    monkeypatch.setattr(serve, "serve_command",
                        lambda folder, port, host: [sys.executable, "-c", FAKE_SERVER, str(port), tests])
    with start_server(tiny_folder, port=free_port(), timeout_s=20, log=tmp_path / "server.log") as server:
        client = OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0, timeout=10)
        reply = client.chat.completions.create(model=server.model, messages=MESSAGES)
    assert reply.choices[0].message.content == "local reply"


# Prevents: the local bypass wiping hosts a student (or the platform) already exempted from the proxy.
def test_proxy_bypass_keeps_existing_no_proxy_hosts(monkeypatch):
    from helpers.net import bypass_proxy_for_local

    monkeypatch.setenv("no_proxy", "intranet.example, localhost")
    monkeypatch.delenv("NO_PROXY", raising=False)
    bypass_proxy_for_local()
    bypass_proxy_for_local()
    expected = "intranet.example,localhost,127.0.0.1,0.0.0.0"
    assert serve.os.environ["no_proxy"] == serve.os.environ["NO_PROXY"] == expected

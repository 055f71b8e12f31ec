"""Chat helpers: streaming gives the same text as plain generation, and every turn keeps template and system."""

from __future__ import annotations

import pytest

from helpers import chat
from helpers.chat import Chat, gradio_app, gradio_respond, stream_reply

SYSTEM = "现在你要扮演皇帝身边的女人--甄嬛"


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import AutoModelForCausalLM

    from helpers.tiny_model import ensure_tiny_model

    return AutoModelForCausalLM.from_pretrained(ensure_tiny_model(), dtype="float32")


def fake_stream(calls: list):
    """A stand-in for the model: records the messages it was given and streams a fixed answer."""

    def stream(model, tokenizer, messages, max_new_tokens, sample=False):
        calls.append(messages)
        yield from ["你好", "，主人", "喵"]

    return stream


# Prevents: a streamed chat that shows different text from what the evaluation (plain generate) measured.
def test_streamed_reply_equals_greedy_generation(tiny_model, tiny_tokenizer):
    from helpers.generation import generate_replies

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    streamed = "".join(stream_reply(tiny_model, tiny_tokenizer, messages, max_new_tokens=12))
    assert streamed.strip() == generate_replies(tiny_model, tiny_tokenizer, [messages], 12)[0].strip()
    assert streamed.strip()


# Prevents: a reply ending in "�" when max_new_tokens stops inside a Chinese character (several tokens each).
@pytest.mark.slow  # generates 24 tokens, then streams them again: ~5 s on 2 busy cores
def test_a_character_cut_by_the_token_limit_is_not_shown(tiny_model, tiny_tokenizer):
    from helpers.generation import generate_ids

    messages = [{"role": "user", "content": "请用中文介绍一下北京。"}]
    ids = generate_ids(tiny_model, tiny_tokenizer, [messages], 24)[0]
    cut = next(n for n in range(1, 25) if tiny_tokenizer.decode(ids[:n], skip_special_tokens=True).endswith("\ufffd"))
    streamed = "".join(stream_reply(tiny_model, tiny_tokenizer, messages, max_new_tokens=cut))
    assert streamed == tiny_tokenizer.decode(ids[:cut], skip_special_tokens=True).rstrip("\ufffd")
    assert "\ufffd" not in streamed


# Prevents: a chat that forgets earlier turns or drops the training system prompt from the second turn on.
def test_chat_keeps_history_and_system_prompt(monkeypatch):
    calls = []
    monkeypatch.setattr(chat, "stream_reply", fake_stream(calls))
    session = Chat(model=None, tokenizer=None, system=SYSTEM)
    assert "".join(session.ask("第一句")) == "你好，主人喵"
    list(session.ask("第二句"))
    assert [m["role"] for m in calls[1]] == ["system", "user", "assistant", "user"]
    assert calls[1][0]["content"] == SYSTEM and calls[1][2]["content"] == "你好，主人喵"
    assert len(session.history) == 4
    session.reset()
    assert session.history == []


# Prevents: the gradio page sending gradio's own message objects (or no system prompt) to the chat template.
def test_gradio_respond_streams_growing_answer_with_system(monkeypatch):
    calls = []
    monkeypatch.setattr(chat, "stream_reply", fake_stream(calls))
    respond = gradio_respond(None, None, SYSTEM, 16)
    history = [{"role": "user", "content": "在吗"}, {"role": "assistant", "content": [{"type": "text", "text": "在"}]}]
    assert list(respond("你好", history)) == ["你好", "你好，主人", "你好，主人喵"]
    assert calls[0] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "在吗"},
                        {"role": "assistant", "content": "在"}, {"role": "user", "content": "你好"}]


# Prevents: a gradio version change that breaks building the app, found only when a student launches it.
@pytest.mark.slow
def test_gradio_app_builds_without_launching():
    import gradio as gr

    assert isinstance(gradio_app(None, None, None, 16, title="NekoQA"), gr.ChatInterface)


# Prevents: gradio's own English "Cannot find empty port" after minutes of loading, or a second page on AutoDL's one
# port without a word about who holds it.
def test_chat_page_on_a_taken_port_stops_before_launching_with_what_to_do():
    import socket

    from helpers.chat import PortTaken, launch_chat_page

    class NeverLaunched:
        def launch(self, **kwargs):
            pytest.fail("launched on a taken port")

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(PortTaken) as error:
            launch_chat_page(NeverLaunched(), "127.0.0.1", port)
    message = str(error.value)
    assert f"端口 {port} 已被占用" in message and f"Port {port} is already in use" in message
    assert f"lsof -i :{port}" in message and f"--port {port + 1}" in message


# Prevents: gradio failing to start ("Connection refused" from its own start-up check) after AutoDL's
# `source /etc/network_turbo` set http_proxy without no_proxy.
@pytest.mark.slow
def test_chat_page_starts_while_a_dead_proxy_is_set(monkeypatch, capsys):
    from helpers.chat import launch_chat_page
    from helpers.ports import free_port

    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    app = gradio_app(None, None, None, 16, title="NekoQA")
    port = free_port()
    try:
        launch_chat_page(app, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    finally:
        app.close()
    assert f"http://127.0.0.1:{port}" in capsys.readouterr().out

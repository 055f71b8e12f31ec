"""Chatting with a tuned model: streamed replies, a multi-turn session, a notebook widget and a gradio app.

The prompt is always built by the tokenizer's own chat template, with the same system prompt as in
training: a different template at inference is the most common reason a tuned model "forgets" its persona.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from threading import Thread

from transformers import TextIteratorStreamer

from helpers.generation import GREEDY
from helpers.net import bypass_proxy_for_local
from helpers.ports import how_to_open, port_in_use, port_taken_message, web_address
from helpers.templates import Message


def stream_reply(model, tokenizer, messages: list[Message], max_new_tokens: int, sample: bool = False) -> Iterator[str]:
    """Yield the reply piece by piece while the model writes it (generation runs in a thread)."""
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    settings = {"do_sample": True, "temperature": 0.7, "top_p": 0.9} if sample else GREEDY
    thread = Thread(target=model.generate, kwargs={
        **inputs, "streamer": streamer, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
        **settings,
    })
    thread.start()
    for piece in streamer:  # the last piece may end inside a character cut by max_new_tokens: drop its half
        yield piece.rstrip("\ufffd")
    thread.join()


def with_system(system: str | None, messages: list[Message]) -> list[Message]:
    """Put the training system prompt in front of the conversation (none for NekoQA, as in training)."""
    return ([{"role": "system", "content": system}] if system else []) + messages


@dataclass
class Chat:
    """A multi-turn conversation: each answer is streamed, then kept in the history for the next turn."""

    model: object
    tokenizer: object
    system: str | None = None
    max_new_tokens: int = 256
    sample: bool = False  # greedy by default: the same question gets the same answer
    history: list[Message] = field(default_factory=list)

    def ask(self, text: str) -> Iterator[str]:
        messages = [*self.history, {"role": "user", "content": text}]
        pieces = []
        for piece in stream_reply(self.model, self.tokenizer, with_system(self.system, messages),
                                  self.max_new_tokens, self.sample):
            pieces.append(piece)
            yield piece
        self.history = [*messages, {"role": "assistant", "content": "".join(pieces).strip()}]

    def reset(self) -> None:
        self.history = []


def chat_widget(chat: Chat):
    """An ipywidgets chat box for the notebook: type, press 发送, watch the answer appear."""
    import html

    import ipywidgets as widgets

    transcript = widgets.HTML()
    box = widgets.Text(placeholder="输入问题，回车或点击发送 / type and press Enter", layout={"width": "70%"})
    send, clear = widgets.Button(description="发送"), widgets.Button(description="清空")

    def show(extra: str = "") -> None:
        lines = [f"<b>{'你' if m['role'] == 'user' else '模型'}:</b> {html.escape(m['content'])}" for m in chat.history]
        transcript.value = "<br>".join(lines + ([extra] if extra else []))

    def on_send(_) -> None:
        question, box.value = box.value.strip(), ""
        if not question:
            return
        answer = ""
        for piece in chat.ask(question):
            answer += piece
            show(f"<b>你:</b> {html.escape(question)}<br><b>模型:</b> {html.escape(answer)}▌")
        show()

    def on_clear(_) -> None:
        chat.reset()
        show()

    send.on_click(on_send)
    clear.on_click(on_clear)
    box.on_submit(on_send)
    return widgets.VBox([transcript, widgets.HBox([box, send, clear])])


def _text(content) -> str:
    """Message content from gradio: a string, or a list of parts with ``text``."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def gradio_respond(model, tokenizer, system: str | None, max_new_tokens: int) -> Callable:
    """The function gradio's ChatInterface calls: (message, history) -> the growing answer."""

    def respond(message: str, history: list[dict]) -> Iterator[str]:
        messages = [{"role": turn["role"], "content": _text(turn["content"])} for turn in history]
        messages = with_system(system, [*messages, {"role": "user", "content": message}])
        answer = ""
        for piece in stream_reply(model, tokenizer, messages, max_new_tokens, sample=True):
            answer += piece
            yield answer

    return respond


def gradio_app(model, tokenizer, system: str | None, max_new_tokens: int, title: str):
    """A gradio chat page for the model (``.launch()`` it; ``share=True`` for a public link)."""
    import gradio as gr

    return gr.ChatInterface(gradio_respond(model, tokenizer, system, max_new_tokens), title=title)


class PortTaken(RuntimeError):
    """The chat page's port is in use; the message names it and says what to do."""


def check_page_port(port: int, host: str) -> None:
    """PortTaken when ``host:port`` is in use, naming the port, who may hold it and how to choose another."""
    if port_in_use(port, host):
        raise PortTaken(port_taken_message(port, host, f"python scripts/chat_app.py --port {port + 1} / "
                                                       f"launch_chat_page(app, port={port + 1})"))


def launch_chat_page(app, host: str | None = None, port: int | None = None, share: bool = False, **options):
    """Start a gradio app (default: 0.0.0.0:6006 on AutoDL, else 127.0.0.1:7860) and say how to open it.

    A taken port fails at once with who may hold it, not with gradio's English "Cannot find empty port". Requests to
    this machine skip any proxy (gradio checks its own address over HTTP, and AutoDL's network_turbo sets a proxy).
    ``options`` go to ``app.launch``.
    """
    default_host, default_port = web_address()
    host, port = host or default_host, port or default_port
    check_page_port(port, host)
    bypass_proxy_for_local()
    print(how_to_open(port, host), flush=True)
    return app.launch(server_name=host, server_port=port, share=share, **options)

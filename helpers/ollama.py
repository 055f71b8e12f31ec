"""An Ollama ``Modelfile`` for a GGUF export, written from the training template and checked against it.

Ollama builds the prompt with a Go template (``TEMPLATE``) over ``.Messages``; when a request has no system message,
it puts the Modelfile's ``SYSTEM`` first. The course writes the template for ChatML (Qwen2.5, SmolLM2, Yi: the
tiny and gpu profiles' default models) and, before saving, renders it for probe conversations and compares the text
with ``tokenizer.apply_chat_template``, the prompt the model was trained on. Other template families raise
OllamaTemplateError instead of writing a Modelfile that is not known to match.
"""

from __future__ import annotations

import re
from pathlib import Path

from helpers.paths import display_path
from helpers.templates import Message, default_system_prompt

# Ollama's Go template for ChatML: every message as <|im_start|>role\ncontent<|im_end|>\n, then the open assistant turn.
CHATML_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
CHATML_STOPS = ("<|im_end|>", "<|im_start|>")
# The Go template actions CHATML_TEMPLATE uses, and the Jinja statement each one means (same whitespace trimming).
GO_ACTIONS = {"range .Messages": "{%{l} for message in Messages {r}%}", "end": "{%{l} endfor {r}%}",
              ".Role": "{{{l} message.Role {r}}}", ".Content": "{{{l} message.Content {r}}}"}
PROBES: list[list[Message]] = [
    [{"role": "user", "content": "你好呀，你是谁？"}],
    [{"role": "system", "content": "你是一只猫娘"}, {"role": "user", "content": "主人回来啦"},
     {"role": "assistant", "content": "欢迎回来喵~"}, {"role": "user", "content": "今天吃什么？"}],
]


class OllamaTemplateError(ValueError):
    """The Modelfile's template would not render the training prompt; the message says what to do."""


def render_go_template(template: str, messages: list[Message]) -> str:
    """Render the subset of Go's text/template that ``CHATML_TEMPLATE`` uses (range over .Messages, .Role, .Content)."""
    import jinja2

    def jinja_action(match: re.Match) -> str:
        left, action, right = match.group(1), match.group(2).strip(), match.group(3)
        if action not in GO_ACTIONS:
            raise OllamaTemplateError(f"render_go_template: unsupported action {{{{{action}}}}}")
        return GO_ACTIONS[action].replace("{l}", left).replace("{r}", right)

    source = re.sub(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", jinja_action, template)
    environment = jinja2.Environment(keep_trailing_newline=True, autoescape=False)  # Go's text/template escapes nothing
    rows = [{"Role": m["role"], "Content": m["content"]} for m in messages]
    return environment.from_string(source).render(Messages=rows)


def ollama_messages(system: str, messages: list[Message]) -> list[Message]:
    """The messages Ollama renders: the Modelfile's ``SYSTEM`` first when the request has no system message."""
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def check_template(template: str, system: str, tokenizer) -> None:
    """OllamaTemplateError unless ``template`` renders every probe exactly as the tokenizer's chat template does."""
    for messages in PROBES:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        got = render_go_template(template, ollama_messages(system, messages))
        if got != expected:
            raise OllamaTemplateError(
                "Modelfile 的 TEMPLATE 拼出的提示词与训练时不同，不写 Modelfile（第 02 课：模板不一致会答非所问）。\n"
                "The Modelfile's TEMPLATE renders another prompt than training did; no Modelfile written.\n"
                f"训练 / training: {expected!r}\nOllama: {got!r}"
            )


def modelfile_text(gguf_name: str, system: str) -> str:
    """The Modelfile: the GGUF file, the ChatML template, the system prompt, stop tokens and greedy decoding."""
    stops = "".join(f'PARAMETER stop "{stop}"\n' for stop in CHATML_STOPS)
    return (f"FROM ./{gguf_name}\n"
            f'TEMPLATE """{CHATML_TEMPLATE}"""\n'
            f'SYSTEM """{system}"""\n'
            f"{stops}"
            "PARAMETER temperature 0\n")  # greedy, as the course's generate; raise it for livelier replies


def write_modelfile(gguf: Path, tokenizer, system: str | None = None) -> Path:
    """Write ``Modelfile`` beside ``gguf`` after checking its template; ``system``: default, the template's own."""
    if "<|im_start|>" not in tokenizer.apply_chat_template(PROBES[0], tokenize=False, add_generation_prompt=True):
        raise OllamaTemplateError(
            "课程只为 ChatML 模板（Qwen2.5、SmolLM2、Yi 等）生成并核对 Modelfile；这个模型用的是别的模板。请按第 02 课"
            "手写 TEMPLATE，并用 helpers.ollama.check_template 核对后再用；"
            "或不写 TEMPLATE，让 Ollama 读取 GGUF 里的模板。\n"
            "The course writes and checks Modelfiles for ChatML models only: write this model's TEMPLATE by hand and "
            "check it with helpers.ollama.check_template, or leave TEMPLATE out so Ollama uses the GGUF's own."
        )
    system = default_system_prompt(tokenizer) if system is None else system
    check_template(CHATML_TEMPLATE, system, tokenizer)
    path = Path(gguf).with_name("Modelfile")
    path.write_text(modelfile_text(Path(gguf).name, system), encoding="utf-8")
    print(f"已写出 / wrote {display_path(path)}：ollama create <名字> -f {path.name} && ollama run <名字>")
    return path

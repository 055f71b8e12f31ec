"""The llama.cpp half of ``make check-gguf``: runs in ``.venv-gguf`` (llama-cpp-python), never imports the course.

    .venv-gguf/bin/python scripts/gguf_side.py quantize IN.gguf OUT.gguf q4_k_m
    .venv-gguf/bin/python scripts/gguf_side.py answer MODEL.gguf REQUEST.json   # prints one JSON line

``answer`` reads ``{"messages": [...], "max_tokens": N}``: llama.cpp renders the messages with
the chat template stored in the GGUF (llama-cpp-python's Jinja formatter) and tokenizes them with the GGUF's vocabulary;
it reports those token ids, and the greedy reply's token ids and text (temperature 0, top-k 1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import llama_cpp

QUANT_TYPES = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}


def quantize(source: str, target: str, kind: str) -> None:
    """llama.cpp's own quantizer (what the llama-quantize tool calls), written to ``target``."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[kind]
    if llama_cpp.llama_model_quantize(source.encode(), target.encode(), params) != 0:
        sys.exit(f"llama_model_quantize failed: {source} -> {kind}")


def answer(model_path: str, request_path: str) -> None:
    """Greedy reply of llama.cpp to the request's messages, with the GGUF's own template and tokenizer.

    The template is rendered with llama-cpp-python's Jinja2ChatFormatter given the GGUF's ``tokenizer.chat_template``
    explicitly: ``Llama.create_chat_completion`` may pick a built-in format it guesses from the metadata instead.
    """
    request = json.loads(Path(request_path).read_text(encoding="utf-8"))
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=1024, n_threads=2, seed=0, verbose=False)
    formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm.detokenize([llm.token_eos()], special=True).decode("utf-8"),
        bos_token=llm.detokenize([llm.token_bos()], special=True).decode("utf-8"),
    )
    prompt = formatter(messages=request["messages"]).prompt
    prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    reply_ids = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0):
        if token == llm.token_eos() or len(reply_ids) >= request["max_tokens"]:
            break
        reply_ids.append(token)
    text = llm.detokenize(reply_ids).decode("utf-8", errors="replace")
    print(json.dumps({"prompt": prompt, "prompt_ids": prompt_ids, "reply_ids": reply_ids, "text": text},
                     ensure_ascii=False))


if __name__ == "__main__":
    if sys.argv[1] == "quantize":
        quantize(*sys.argv[2:5])
    else:
        answer(*sys.argv[2:4])

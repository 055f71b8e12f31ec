"""Reading GGUF files through transformers (``from_pretrained(..., gguf_file=...)``), each file parsed once.

transformers builds a new ``gguf.GGUFReader`` for the config, another for the weights and a third for the tokenizer,
and each one parses the file's whole metadata, vocabulary included: ~49k token strings and ~49k merges for SmolLM2,
8-10 s on one CPU thread (measured 2026-12-05 with ``cProfile``: ``GGUFReader._build_fields``). A reader only maps
the file read-only, so within ``each_gguf_parsed_once()`` they all share one per file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def each_gguf_parsed_once() -> Iterator[None]:
    """Within the block, every ``gguf.GGUFReader(path)`` of the same file and mode is the same reader."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def shared_reader(path, mode="r"):
        key = (str(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader  # transformers imports it from the module on every read
    try:
        yield
    finally:
        gguf.GGUFReader = original

"""each_gguf_parsed_once: one parse of a GGUF file however many readers transformers builds, and nothing after."""

from __future__ import annotations

import gguf

from helpers.gguf_read import each_gguf_parsed_once
from helpers.tiny_model import gguf_path


# Prevents: the tokenizer, config and weights each parsing the file's 49k-token vocabulary again (8-10 s each), or
# the shared reader outliving the block (a later read of a rewritten file would see the old one).
def test_readers_of_one_file_are_shared_only_inside_the_block():
    original = gguf.GGUFReader
    with each_gguf_parsed_once():
        first = gguf.GGUFReader(gguf_path())
        assert gguf.GGUFReader(gguf_path()) is first
        assert first.fields["general.architecture"].contents() == "llama"
    assert gguf.GGUFReader is original

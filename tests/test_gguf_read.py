"""each_gguf_parsed_once: one parse of a GGUF file however many readers transformers builds, and nothing after."""

from __future__ import annotations

import gguf
import numpy as np

from helpers.gguf_read import each_gguf_parsed_once


def write_small_gguf(path):
    """A GGUF file with one metadata field and one tensor (``gguf.GGUFWriter``, as llama.cpp's converter writes)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# Prevents: the tokenizer, config and weights each parsing the file's 49k-token vocabulary again (8-10 s each), or
# the shared reader outliving the block (a later read of a rewritten file would see the old one).
def test_readers_of_one_file_are_shared_only_inside_the_block(tmp_path):
    path, original = write_small_gguf(tmp_path / "small.gguf"), gguf.GGUFReader
    with each_gguf_parsed_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first
        assert first.fields["general.architecture"].contents() == "llama" and len(first.tensors) == 1
    assert gguf.GGUFReader is original and gguf.GGUFReader(path) is not first

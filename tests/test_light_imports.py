"""The chat app and the server load without the training libraries."""

import subprocess
import sys

import pytest

TRAINING_LIBRARIES = ("trl", "peft", "bitsandbytes")


# Prevents: helpers.serve or helpers.chat importing helpers.train again (for GREEDY), which loads trl, peft and
# bitsandbytes into a server that needs none of them.
@pytest.mark.slow  # a fresh interpreter importing transformers: ~5 s
def test_serve_and_chat_import_no_training_library():
    code = ("import sys, helpers.serve, helpers.chat; "
            f"print(' '.join(name for name in {TRAINING_LIBRARIES!r} if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == []

"""Messages that tell a student of this course nothing they can act on, each filtered narrowly at its source.

- bitsandbytes, logger ``bitsandbytes.backends.cpu.ops``, on CPUs with AVX512-BF16 (the tiny profile's machines):
  "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. Please make sure you
  already `pip install kernels` ...". ``kernels`` would fetch an optional CPU kernel from the Hugging Face hub; without
  it bitsandbytes computes 4-bit layers with its own CPU code. GPUs never print it. Other bitsandbytes messages stay.

Jupyter's "Kernel is running over TCP without encryption" is not filtered: ``helpers.course`` starts its kernels over
IPC instead, which is what that message asks for.
"""

from __future__ import annotations

import logging

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class DropMessage(logging.Filter):
    """Drops the records whose message starts with ``prefix``; lets every other record through."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def silence_known_noise() -> None:
    """Install the filters above (once; importing ``helpers`` does it, before bitsandbytes is imported)."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, DropMessage) and f.prefix == BNB_KERNELS_MESSAGE for f in logger.filters):
        logger.addFilter(DropMessage(BNB_KERNELS_MESSAGE))

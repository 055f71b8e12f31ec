"""Attention for padding-free batches that spends no work between the packed samples.

A padding-free batch is one row holding several samples, its ``position_ids`` restarting at 0 for each. transformers
turns that into a block-diagonal causal mask, and sdpa (on CPU, and on a GPU without FlashAttention-2) computes the
whole ``tokens x tokens`` square, then masks out the blocks between samples: with 8 samples of ~110 tokens, 7/8 of
the attention work is thrown away. ``packed_sdpa_forward`` runs sdpa on each sample's slice instead, as one causal
attention each, which is what FlashAttention-2's variable-length kernel does in a single call.

Everything else (padded batches, generation with a KV cache) goes to transformers' own sdpa unchanged. Load a model
with ``attn_implementation=PACKED_SDPA`` (``load_model_4bit`` does) to use it. The sample bounds are computed once
per batch, not once per layer: on a GPU each computation waits for the device (``.tolist()``).

``fastest_attention()`` picks what ``load_model_4bit`` uses, by what was measured on each device:

- CPU: ``packed_sdpa`` (tiny profile, 2 cores: faster than one masked square, see lesson 03's appendix);
- CUDA GPU: FlashAttention-2 when the ``flash_attn`` package is installed (its variable-length kernel handles
  padding-free batches in one call), else PyTorch's ``sdpa``. On one H200 (2026-12-04, ``benchmarks/results/
  gpu-nvidia-h200.json``) ``packed_sdpa`` was 2.3-2.8x *slower* than ``sdpa``: its per-sample loop launches small
  kernels and waits for the device, and a GPU step is bound by such fixed costs, not by the masked-out work.
  ``sdpa``'s block-diagonal mask does grow with the square of a packed row: at ~18k tokens in one row it cost more
  than it saved (256 Huanhuan rows per step were slower per token than 128), so the batch planner
  (``helpers.cost.plan_batch``) keeps a packed row under ``MAX_PACKED_TOKENS``.
"""

from __future__ import annotations

import importlib.util

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_SDPA = "packed_sdpa"


_last_bounds: list = [None, None, None]  # the position_ids tensor last seen, its version, and its sample bounds


def fastest_attention() -> str:
    """CUDA: FlashAttention-2 when ``flash_attn`` is installed, else ``sdpa``; CPU: the course's ``packed_sdpa``."""
    if not torch.cuda.is_available():
        return PACKED_SDPA
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"


def batch_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """``sample_bounds``, computed once for the tensor that every layer of one forward (and its recompute) gets."""
    tensor, version, bounds = _last_bounds
    if tensor is not position_ids or version != position_ids._version:
        _last_bounds[:] = position_ids, position_ids._version, sample_bounds(position_ids)
    return _last_bounds[2]


def sample_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each sample in a packed row: a new sample begins wherever the position does not go up by 1."""
    positions = position_ids[0]
    starts = [0] + (torch.diff(positions) != 1).nonzero().flatten().add(1).tolist()
    return list(zip(starts, starts[1:] + [len(positions)], strict=True))


def packed_sdpa_forward(module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """sdpa on each packed sample separately; any other call is plain sdpa. Shapes: (batch, heads, tokens, dim)."""
    packed = (position_ids is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2] > 1
              and len(bounds := batch_bounds(position_ids)) > 1)
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    outputs = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                      None, **kwargs)[0] for start, end in bounds]
    return torch.cat(outputs, dim=1), None  # sdpa returns (batch, tokens, heads, dim)


AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)  # the masks sdpa gets when the batch is not packed

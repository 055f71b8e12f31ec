"""What the hardware can do: device, bf16 support, and the compute dtype to train with."""

from __future__ import annotations

import warnings

import torch

from helpers.profiles import Profile


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported() -> bool:
    """bf16 needs an Ampere (RTX 30xx / A100) or newer GPU; CPUs here emulate it ~50x slower."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def compute_dtype(profile: Profile) -> torch.dtype:
    """The profile's compute dtype, adjusted to the hardware.

    - CPU: float32 (bf16 on these CPUs is about 50x slower).
    - GPU with bf16: bfloat16.
    - Older GPU (T4, V100): float16 with a warning, since fp16 can overflow to loss 0 / NaN.
    """
    if not torch.cuda.is_available():
        return torch.float32
    wanted = getattr(torch, profile.compute_dtype)
    if wanted is torch.bfloat16 and not bf16_supported():
        warnings.warn(
            "这块 GPU 不支持 bf16，改用 fp16；若 loss 变成 0 或 NaN，请减小学习率或换 bf16 显卡。\n"
            "This GPU lacks bf16; using fp16. If the loss becomes 0 or NaN, lower the learning rate "
            "or use a bf16-capable GPU.",
            stacklevel=2,
        )
        return torch.float16
    return wanted

"""What the hardware can do: device, bf16 support, and the compute dtype to train with."""

from __future__ import annotations

import torch

from helpers.messages import warn
from helpers.profiles import Profile

DTYPES = ("float32", "float16", "bfloat16")


class HardwareError(RuntimeError):
    """The configuration demands something this machine cannot do; the message says what to change."""


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported() -> bool:
    """bf16 needs an Ampere (RTX 30xx / A100) or newer GPU; CPUs here emulate it ~50x slower."""
    # By default torch also says yes on a T4 or V100, which only emulate bf16 (slowly).
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def require_dtype(name: str) -> torch.dtype:
    """The compute dtype a user demands, or a HardwareError when this machine cannot train in it."""
    if name not in DTYPES:
        raise HardwareError(f"未知的计算精度 {name!r}，可选：{', '.join(DTYPES)} / "
                            f"unknown compute dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    if name != "float32" and not torch.cuda.is_available():
        raise HardwareError(
            f"没有 GPU 时不能用 {name} 训练：CPU 上请用 float32（tiny 配置即如此）。\n"
            f"{name} needs a GPU: on the CPU train in float32 (as the tiny profile does)."
        )
    if name == "bfloat16" and not bf16_supported():
        gpu = torch.cuda.get_device_name(0)
        raise HardwareError(
            f"{gpu} 不支持 bf16（需要 RTX 30 系、A100 或更新的 GPU）。请改用 float16，"
            "或不指定精度、由 compute_dtype(profile) 自动选择，或换一块支持 bf16 的 GPU。\n"
            f"{gpu} lacks bf16 (it needs an RTX 30xx, A100 or newer GPU): use float16, or leave the dtype "
            "to compute_dtype(profile), or use a bf16-capable GPU."
        )
    return getattr(torch, name)


def compute_dtype(profile: Profile, demand: str | None = None) -> torch.dtype:
    """The profile's compute dtype, adjusted to the hardware, or the dtype the user ``demand``s.

    - CPU: float32 (bf16 on these CPUs is about 50x slower).
    - GPU with bf16: bfloat16.
    - Older GPU (T4, V100): float16 with a warning, since fp16 can overflow to loss 0 / NaN.
    - ``demand="bfloat16"`` (or float16, float32) is honoured or refused with a HardwareError, never switched.
    """
    if demand:
        return require_dtype(demand)
    if not torch.cuda.is_available():
        return torch.float32
    wanted = getattr(torch, profile.compute_dtype)
    if wanted is torch.bfloat16 and not bf16_supported():
        warn(
            "这块 GPU 不支持 bf16，改用 fp16；若 loss 变成 0 或 NaN，请减小学习率或换 bf16 显卡。\n"
            "This GPU lacks bf16; using fp16. If the loss becomes 0 or NaN, lower the learning rate "
            "or use a bf16-capable GPU."
        )
        return torch.float16
    return wanted

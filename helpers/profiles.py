"""Course profiles: `tiny` (CPU, offline, minutes) and `gpu` (real models and data).

A profile only fixes sizes, names and dtypes; the code path is the same for both.
Choose one with the environment variable ``COURSE_PROFILE`` (``tiny`` or ``gpu``);
without it the course picks ``gpu`` when a CUDA GPU is present, else ``tiny``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROFILE_ENV = "COURSE_PROFILE"
TINY_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class ProfileError(ValueError):
    """An unknown or unusable profile name."""


@dataclass(frozen=True)
class Profile:
    """Everything that differs between the tiny and the gpu run of the course."""

    name: str
    model_id: str
    compute_dtype: str  # "float32" on CPU; "bfloat16" on GPU (fp16 where bf16 is missing)
    max_new_tokens: int
    seed: int = 42

    @property
    def is_tiny(self) -> bool:
        return self.name == "tiny"


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        model_id=TINY_MODEL_ID,
        compute_dtype="float32",
        max_new_tokens=48,
    ),
    "gpu": Profile(
        name="gpu",
        model_id="Qwen/Qwen2.5-1.5B-Instruct",
        compute_dtype="bfloat16",
        max_new_tokens=256,
    ),
}


def cuda_available() -> bool:
    """True when torch is installed and sees a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def get_profile(name: str | None = None) -> Profile:
    """Return the named profile, or the one chosen by ``COURSE_PROFILE`` / the hardware."""
    name = name or os.environ.get(PROFILE_ENV) or ("gpu" if cuda_available() else "tiny")
    key = name.strip().lower()
    if key not in PROFILES:
        known = ", ".join(PROFILES)
        raise ProfileError(
            f"未知的课程配置 {name!r}：请把环境变量 {PROFILE_ENV} 设为 {known} 之一（或删除它）。\n"
            f"Unknown course profile {name!r}: set {PROFILE_ENV} to one of {known} (or unset it)."
        )
    return PROFILES[key]

"""Merge a LoRA adapter into its base model, and check the merged model behaves like the adapter.

Merge into a 16-bit copy of the base (fp32 on CPU), never into the 4-bit one: re-quantizing
W + BA to NF4 rounds most of the small update BA away (notebook 06 measures it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.download import download_model
from helpers.hardware import compute_dtype, device
from helpers.paths import COMPLETE_MARKER, display_path, is_complete, mark_complete, one_at_a_time, outputs_dir
from helpers.profiles import Profile, get_profile


def merged_dir(lesson: str, profile: Profile) -> Path:
    """Where a lesson's merged model is saved: ``outputs/merged/<lesson>-<profile>``."""
    return outputs_dir("merged", f"{lesson}-{profile.run_name}")


def merge_adapter(model_dir: Path, adapter: Path, target: Path, dtype: torch.dtype, max_shard_size: str) -> None:
    """Reload the base in ``dtype`` (on the GPU if there is one), merge the adapter, save shards + tokenizer, marker."""
    (target / COMPLETE_MARKER).unlink(missing_ok=True)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map={"": device()})
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(target, max_shard_size=max_shard_size)  # also writes generation_config.json
    AutoTokenizer.from_pretrained(adapter).save_pretrained(target)
    mark_complete(target)


def merge_lesson(lesson: str, profile: Profile | None = None) -> Path:
    """A lesson's merged model: reuse a finished one, else merge its adapter (``train_lesson`` it first)."""
    profile = profile or get_profile()
    target = merged_dir(lesson, profile)
    with one_at_a_time(target):  # lessons 06, 08 and 11 run side by side merge once
        if is_complete(target):
            print(f"使用已合并的模型 / reusing merged model {display_path(target)}")
            return target
        from helpers.lessons import require_adapter  # here: merge_adapter alone needs no data or metrics

        adapter = require_adapter(lesson, profile)
        with one_at_a_time(adapter):
            merge_adapter(download_model(profile=profile), adapter, target, compute_dtype(profile),
                          profile.max_shard_size)
    return target


@torch.no_grad()
def logits_on(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float32 logits of ``model`` on a padded batch (``input_ids``, ``attention_mask``)."""
    model.eval()
    inputs = {key: batch[key].to(model.device) for key in ("input_ids", "attention_mask")}
    return model(**inputs).logits.float().cpu()


def compare_logits(a: torch.Tensor, b: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, float]:
    """Largest and mean absolute difference, and top-1 agreement, over the real (non-pad) positions."""
    keep = attention_mask.bool()
    diff = (a - b).abs()[keep]
    return {
        "max_abs": diff.max().item(),
        "mean_abs": diff.mean().item(),
        "top1_agree": (a.argmax(-1)[keep] == b.argmax(-1)[keep]).float().mean().item(),
    }


def load_merged(lesson: str, profile: Profile | None = None) -> tuple[AutoModelForCausalLM, object]:
    """A lesson's merged model (merged first if missing) on the profile's device, and its tokenizer."""
    profile = profile or get_profile()
    folder = merge_lesson(lesson, profile)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=compute_dtype(profile), device_map={"": device()})
    return model, AutoTokenizer.from_pretrained(folder)

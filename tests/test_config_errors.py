"""A wrong configuration stops with a message that says what to change, before any time is spent training.

Covered elsewhere: an unknown chat template (test_templates), an unknown profile (test_profiles),
a model the offline tiny profile does not have (test_download).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig

from helpers.env import WARNING, check_gpu
from helpers.hardware import HardwareError, bf16_supported, compute_dtype
from helpers.models import SEVEN_PROJECTIONS
from helpers.profiles import get_profile
from helpers.train import LoraTargetError, check_lora_targets, make_trainer

GPU = get_profile("gpu")


@pytest.fixture
def old_gpu(monkeypatch):
    """A T4: CUDA works, bf16 only emulated (torch's default check still says yes to emulation)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")


def test_demanding_bf16_on_a_gpu_without_it_is_an_error(old_gpu):
    # Prevents: bf16 silently emulated on a T4 / V100 (very slow), or an English error from deep inside SFTConfig.
    assert not bf16_supported()
    with pytest.raises(HardwareError, match="Tesla T4 lacks bf16.*use float16"):
        compute_dtype(GPU, demand="bfloat16")
    assert compute_dtype(GPU, demand="float16") is torch.float16


def test_profile_bf16_falls_back_to_fp16_with_a_warning(old_gpu):
    # The profile's bf16 is a preference (T4 students still train), unlike a user's explicit demand.
    with pytest.warns(UserWarning, match="lacks bf16; using fp16"):
        assert compute_dtype(GPU) is torch.float16


def test_half_precision_on_cpu_and_unknown_dtypes_are_errors(monkeypatch):
    # Prevents: "Your setup doesn't support bf16/gpu" from transformers, or a typo like "bf16" becoming float32.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HardwareError, match="bfloat16 needs a GPU: on the CPU train in float32"):
        compute_dtype(GPU, demand="bfloat16")
    with pytest.raises(HardwareError, match="unknown compute dtype 'bf16'; choose one of: float32, float16, bfloat16"):
        compute_dtype(GPU, demand="bf16")
    assert compute_dtype(GPU, demand="float32") is torch.float32


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import AutoModelForCausalLM

    from helpers.tiny_model import ensure_tiny_model

    return AutoModelForCausalLM.from_pretrained(ensure_tiny_model())


def test_course_targets_and_peft_shorthands_pass(tiny_model):
    check_lora_targets(tiny_model, list(SEVEN_PROJECTIONS))
    check_lora_targets(tiny_model, {"self_attn.q_proj", "mlp.down_proj"})  # a longer suffix, as peft accepts
    check_lora_targets(tiny_model, "all-linear")
    check_lora_targets(tiny_model, r".*\.(q|v)_proj")  # a regular expression on the full name


@pytest.mark.parametrize("targets", [["q_proj", "query_key_value"], ["c_attn"], r".*\.qkv"])
def test_unknown_lora_target_lists_the_model_layers(tiny_model, targets):
    # Prevents: peft silently skipping a misspelt target when another one matches (LoRA on fewer layers than
    # the student thinks), or its bare "Target modules not found" when none matches (a Llama recipe on GPT-2).
    with pytest.raises(LoraTargetError) as failure:
        check_lora_targets(tiny_model, targets)
    en = str(failure.value).splitlines()[1]
    assert "not in this model" in en
    assert "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in en


def test_make_trainer_checks_targets_before_building_the_trainer(tiny_model):
    # Prevents: the error surfacing only after SFTTrainer has tokenized the data and wrapped the model.
    with pytest.raises(LoraTargetError, match="qproj"):
        make_trainer(tiny_model, None, [], LoraConfig(target_modules=["qproj"]), args=None)


def test_environment_report_says_an_emulating_gpu_lacks_bf16(old_gpu, monkeypatch):
    # Prevents: lesson 00 telling a T4 student "bf16 yes" because torch counts its slow emulation.
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=16 * 2**30))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    (bf16,) = [check for check in check_gpu() if check.item == "bf16"]
    assert bf16.verdict == WARNING and "fp16" in bf16.advice

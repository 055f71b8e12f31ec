from dataclasses import fields

import pytest

from helpers.profiles import PROFILE_ENV, Profile, ProfileError, get_profile


def test_unknown_profile_is_a_clear_error(monkeypatch):
    # Prevents: a typo in COURSE_PROFILE silently running the wrong sizes.
    monkeypatch.setenv(PROFILE_ENV, "huge")
    with pytest.raises(ProfileError, match="COURSE_PROFILE.*tiny, gpu"):
        get_profile()


def test_env_variable_chooses_profile(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "GPU")
    assert get_profile().name == "gpu"
    monkeypatch.setenv(PROFILE_ENV, "tiny")
    assert get_profile().name == "tiny"


def test_default_is_tiny_without_cuda(monkeypatch):
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    monkeypatch.setattr("helpers.profiles.cuda_available", lambda: False)
    assert get_profile().name == "tiny"
    monkeypatch.setattr("helpers.profiles.cuda_available", lambda: True)
    assert get_profile().name == "gpu"


# Prevents: the tiny run testing another path than the gpu run (a lesson, a LoRA target or a seed only one has).
def test_profiles_differ_only_in_sizes_and_names():
    tiny, gpu = get_profile("tiny"), get_profile("gpu")
    differing = {f.name for f in fields(Profile) if getattr(tiny, f.name) != getattr(gpu, f.name)}
    assert differing <= {"name", "model_id", "compute_dtype", "max_new_tokens", "recipes", "max_shard_size",
                         "faster_rows"}
    assert tiny.recipes.keys() == gpu.recipes.keys() and tiny.faster_rows.keys() == gpu.faster_rows.keys()
    assert tiny.compute_dtype == "float32" and gpu.compute_dtype == "bfloat16"
    assert tiny.is_tiny and not gpu.is_tiny

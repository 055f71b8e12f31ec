"""Lesson 09's preference data and DPO settings (the training itself runs in notebooks/09_dpo.ipynb)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.data import DataError
from helpers.dpo import dpo_config, load_preferences
from helpers.profiles import get_profile
from helpers.train import sft_config


# Prevents: pairs handed to DPOTrainer in a shape it does not read as conversational (prompt / chosen / rejected).
@pytest.mark.parametrize(("split", "count"), [("train", 130), ("eval", 28)])
def test_preferences_are_conversational_pairs(split, count):
    pairs = load_preferences(split)
    assert len(pairs) == count
    for pair in pairs:
        assert [m["role"] for m in pair["prompt"]] == ["user"]
        assert [m["role"] for m in pair["chosen"]] == [m["role"] for m in pair["rejected"]] == ["assistant"]
        assert pair["chosen"][0]["content"] != pair["rejected"][0]["content"]


# Prevents: held-out pairs that were also trained on, which would make the lesson's accuracy check meaningless.
def test_held_out_prompts_are_not_in_the_training_pairs():
    train = {pair["prompt"][0]["content"] for pair in load_preferences("train")}
    assert not train & {pair["prompt"][0]["content"] for pair in load_preferences("eval")}


# Prevents: a broken preference file reaching the trainer instead of a message naming row and field.
def test_a_pair_without_rejected_is_refused_with_row_and_field(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"prompt": "你好", "chosen": "主人好喵~"}], ensure_ascii=False), encoding="utf-8")
    with pytest.raises(DataError, match="rejected"):
        load_preferences("train", path)


# Prevents: DPO drifting from the SFT lessons' checkpoints, optimizer and dtype (resume and memory rely on them), and
# a beta edited in lesson 09 (its exercise) that never reaches the trainer.
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_config_keeps_the_sft_settings_and_takes_the_notebooks_beta(tmp_path, beta):
    recipe = get_profile("tiny").recipe("nekoqa_dpo")
    dpo, sft = dpo_config(recipe, tmp_path, torch.float32, 7, beta), sft_config(recipe, tmp_path, torch.float32, 7)
    assert dpo.beta == beta and dpo.max_length == recipe.cutoff
    for key in ("save_steps", "save_total_limit", "optim", "learning_rate", "max_steps", "seed",
                "activation_checkpointing", "per_device_train_batch_size"):
        assert getattr(dpo, key) == getattr(sft, key), key

"""Padding-free batches keep their rows apart: the loss of a packed batch is the rows' one-by-one loss.

Everything goes through the course's training path (``sft_config`` -> ``make_trainer`` -> the trainer's collator
and ``compute_loss``, with the course's ``packed_sdpa`` attention) on the tiny model in float32, so the only
differences are the order of float additions.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers.attention import PACKED_SDPA, sample_bounds
from helpers.encoding import encode_conversations
from helpers.hub_data import course_conversations
from helpers.profiles import get_profile
from helpers.templates import IGNORE_INDEX
from helpers.tiny_model import ensure_tiny_model
from helpers.train import heldout_loss, lora_config, make_trainer, sft_config

ROW_LENGTHS = (16, 24, 32)  # short rows keep the test fast; truncation keeps prompt and answer in each
RELATIVE_TOLERANCE = 1e-4  # float32; measured differences are ~1e-7, cross-row attention changes the loss by >1e-2


@pytest.fixture(scope="module")
def trainer_and_rows(tiny_tokenizer, tmp_path_factory):
    """The course's SFTTrainer on the float32 tiny model, and three NekoQA rows cut to different lengths."""
    profile = get_profile("tiny")
    recipe = profile.recipe("nekoqa")
    conversations = course_conversations("nekoqa", "train", len(ROW_LENGTHS))
    with pytest.warns(UserWarning, match="truncated"):
        rows = [encode_conversations(tiny_tokenizer, [conversation], length)[0]
                for conversation, length in zip(conversations, ROW_LENGTHS, strict=True)]
    model = AutoModelForCausalLM.from_pretrained(ensure_tiny_model(), dtype=torch.float32,
                                                 attn_implementation=PACKED_SDPA)
    args = sft_config(recipe, tmp_path_factory.mktemp("packing"), torch.float32, profile.seed)
    trainer = make_trainer(model, tiny_tokenizer, rows, lora_config(recipe), args)
    trainer.model.eval()
    return trainer, rows, one_by_one_loss(trainer, rows)


def training_loss(trainer, batch: dict) -> float:
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, dict(batch)).item()


def one_by_one_loss(trainer, rows: list[dict]) -> float:
    """Each row alone through the same path, weighted by its number of learned tokens."""
    weights = [sum(label != IGNORE_INDEX for label in row["labels"][1:]) for row in rows]
    losses = [training_loss(trainer, trainer.data_collator([row])) for row in rows]
    return sum(w * loss for w, loss in zip(weights, losses, strict=True)) / sum(weights)


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# Prevents: rows of a batch reading each other (or padding) during training, silently teaching the wrong context.
def test_packed_batch_loss_equals_rows_one_by_one(trainer_and_rows):
    trainer, rows, one_by_one = trainer_and_rows
    batch = trainer.data_collator(rows)
    assert batch["input_ids"].shape == (1, sum(ROW_LENGTHS))  # really packed: one row, no padding
    assert relative_difference(training_loss(trainer, batch), one_by_one) <= RELATIVE_TOLERANCE


# Prevents: a test above that would pass even if transformers stopped separating packed rows.
def test_packed_rows_without_position_restart_change_the_loss(trainer_and_rows):
    trainer, rows, one_by_one = trainer_and_rows
    batch = trainer.data_collator(rows)
    batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]  # one long sequence: plain causal mask
    assert relative_difference(training_loss(trainer, batch), one_by_one) > RELATIVE_TOLERANCE


# Prevents: a held-out loss (padded batches) that measures something else than the padding-free training loss.
def test_heldout_loss_matches_padding_free_training_loss(trainer_and_rows):
    trainer, rows, _ = trainer_and_rows
    packed = training_loss(trainer, trainer.data_collator(rows))
    assert relative_difference(heldout_loss(trainer.model, rows), packed) <= RELATIVE_TOLERANCE


# Prevents: packed_sdpa cutting a packed row at the wrong place (a sample would see its neighbour, or lose its start).
def test_sample_bounds_start_where_positions_restart():
    assert sample_bounds(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])) == [(0, 3), (3, 5), (5, 9)]
    assert sample_bounds(torch.tensor([[0, 1, 2, 3]])) == [(0, 4)]

"""The memory estimator: its parameter counts match real models, and its activations behave as they must."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, Qwen2Config

from helpers.memory import (
    GIB,
    QWEN_72B,
    ModelShape,
    Settings,
    estimate,
    fit_table,
    fit_table_models,
    lora_parameters,
    weight_bytes,
)
from helpers.models import MODELS
from helpers.profiles import GPU_RECIPES, TINY_MODEL_ID, get_profile
from helpers.registry import SFT_LESSONS
from helpers.tiny_model import ensure_tiny_model
from helpers.train import load_model_4bit, lora_config

# Parameter counts published on the models' Hugging Face pages (cut to 0.01 B, e.g. 7.6156 B -> 7.61B).
PUBLISHED_PARAMETERS = {
    "Qwen/Qwen2.5-0.5B-Instruct": 0.49e9,
    "Qwen/Qwen2.5-1.5B-Instruct": 1.54e9,
    "meta-llama/Llama-3.2-3B-Instruct": 3.21e9,
    "Qwen/Qwen2.5-7B-Instruct": 7.61e9,
    "Qwen/Qwen2.5-72B-Instruct": 72.7e9,
}
# Small configs of both architectures: tied and untied embeddings, with and without q/k/v biases.
SMALL_CONFIGS = [
    Qwen2Config(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=300, tie_word_embeddings=False),
    LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=8,
                num_key_value_heads=2, head_dim=16, vocab_size=300, tie_word_embeddings=True),
]
TINY_SETTINGS = Settings.for_recipe(get_profile("tiny").recipe("nekoqa"), gpu=False)


@pytest.fixture(scope="module")
def tiny_shape() -> ModelShape:
    return ModelShape.from_config(AutoConfig.from_pretrained(ensure_tiny_model()))


def parameter_count(shape: ModelShape) -> int:
    return weight_bytes(shape, Settings(weights="32bit")) // 4


# Prevents: the hard-coded SmolLM2 numbers drifting from the model the tiny profile really loads.
def test_known_tiny_config_matches_the_local_model(tiny_shape):
    assert MODELS[TINY_MODEL_ID].shape == tiny_shape


# Prevents: a mistyped config number that makes a model look smaller (or larger) than it is.
@pytest.mark.parametrize("name", PUBLISHED_PARAMETERS)
def test_known_configs_have_the_published_parameter_counts(name):
    assert PUBLISHED_PARAMETERS[name] <= parameter_count(fit_table_models()[name]) < PUBLISHED_PARAMETERS[name] + 0.01e9


# Prevents: weights or LoRA sizes built on a wrong picture of the architecture (biases, tied embeddings, GQA).
@pytest.mark.parametrize("config", SMALL_CONFIGS, ids=["qwen2-untied-bias", "llama-tied"])
def test_parameter_and_lora_counts_match_transformers_and_peft(config):
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shape = ModelShape.from_config(config)
    assert parameter_count(shape) == sum(p.numel() for p in model.parameters())
    recipe = GPU_RECIPES["nekoqa"]
    trainable, _ = get_peft_model(model, lora_config(recipe)).get_nb_trainable_parameters()
    assert lora_parameters(shape, recipe.lora_r) == trainable


# Prevents: "does it fit" answers built on a wrong NF4 size (footprint leaves out the absmax constants, ~1% here).
@pytest.mark.slow
def test_nf4_weights_match_the_loaded_models_footprint(tiny_shape):
    model = load_model_4bit(ensure_tiny_model(), get_profile("tiny"))
    assert estimate(tiny_shape, TINY_SETTINGS).weights == pytest.approx(model.get_memory_footprint(), rel=0.03)


# Prevents: an estimate that says a bigger batch or longer rows cost nothing.
@pytest.mark.parametrize("field", ["batch_size", "length"])
def test_memory_grows_with_batch_and_length(field):
    shape = MODELS["Qwen/Qwen2.5-1.5B-Instruct"].shape
    settings = Settings.for_recipe(GPU_RECIPES["huanhuan"])
    smaller, larger = (estimate(shape, replace(settings, **{field: n})) for n in (2, 4))
    assert larger.activations > smaller.activations
    assert larger.total > smaller.total


# Prevents: advice to turn on gradient checkpointing that the estimate would not back.
@pytest.mark.parametrize("name", PUBLISHED_PARAMETERS)
def test_checkpointing_reduces_activations(name):
    settings = Settings.for_recipe(GPU_RECIPES["nekoqa"])
    with_checkpoints = estimate(fit_table_models()[name], settings)
    without = estimate(fit_table_models()[name], replace(settings, checkpointing=False))
    assert with_checkpoints.activations < without.activations
    assert with_checkpoints.total < without.total


# Prevents: the "7B QLoRA runs on a 24 GB card" advice drifting from what the course's recipes need.
def test_fit_table_covers_the_models_and_7b_qlora_fits_24_gb():
    table = fit_table()
    assert all(name.rsplit("/", 1)[-1] in table for name in PUBLISHED_PARAMETERS)
    shape = MODELS["Qwen/Qwen2.5-7B-Instruct"].shape
    profile = get_profile("gpu", model="Qwen/Qwen2.5-7B-Instruct")  # with the 7B model's own 24 GB batches
    recipes = [profile.recipe(lesson) for lesson in SFT_LESSONS]
    assert all(estimate(shape, Settings.for_recipe(recipe)).total < 24 * GIB for recipe in recipes)


# Prevents: a table that answers "yes" to everything: 16-bit LoRA of 72B needs more than one 80 GB card.
def test_qlora_needs_less_than_16_bit_lora():
    settings = Settings.for_recipe(GPU_RECIPES["nekoqa"])
    for name in PUBLISHED_PARAMETERS:
        qlora = estimate(fit_table_models()[name], settings).total
        assert qlora < estimate(fit_table_models()[name], replace(settings, weights="16bit")).total
    assert estimate(QWEN_72B, replace(settings, weights="16bit")).total > 80 * GIB


# Prevents: the estimator assuming a pipeline that lesson 03's cells no longer build (the optimizer, the compute
# dtype, checkpointing or the micro-batch changed in the sft_config cell but not in Settings.for_recipe): on this
# CPU machine the cell's own SFTConfig is compared with the estimator's CPU settings.
@pytest.mark.parametrize("lesson", SFT_LESSONS)
def test_the_estimator_assumes_what_the_sft_config_cell_builds(tmp_path, lesson):
    from helpers import lesson03_cells

    recipe = replace(get_profile("tiny").recipe(lesson), checkpointing=lesson != "tang")
    args = lesson03_cells.sft_config(output_dir=tmp_path, recipe=recipe, eval_steps=None, dtype=torch.float32, seed=0)
    settings = Settings.for_recipe(recipe, gpu=torch.cuda.is_available())
    assert {"adamw_torch": "adamw", "paged_adamw_8bit": "paged_adamw_8bit"}[args.optim] == settings.optimizer
    assert settings.compute_bytes == (2 if args.bf16 or args.fp16 else 4)
    assert settings.checkpointing == args.activation_checkpointing
    assert (settings.batch_size, settings.length) == (args.per_device_train_batch_size, recipe.cutoff)

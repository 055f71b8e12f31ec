"""Course profiles: `tiny` (CPU, offline, minutes) and `gpu` (real models and data).

A profile only fixes sizes, names and dtypes; the code path is the same for both.
Choose one with the environment variable ``COURSE_PROFILE`` (``tiny`` or ``gpu``);
without it the course picks ``gpu`` when a CUDA GPU is present, else ``tiny``.
``COURSE_MODEL`` swaps the profile's model (``helpers.models``): its hub ids and LoRA targets. How a recipe's rows per
optimizer step are split into micro-batches is planned for the model and card at run time (``helpers.cost.plan_batch``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace

from helpers.models import MODEL_ENV, SEVEN_PROJECTIONS, chosen_model, lora_targets
from helpers.registry import SFT_LESSONS

PROFILE_ENV = "COURSE_PROFILE"
TINY_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GPU_MODEL_ID = "Qwen/Qwen2.5-1.5B-Instruct"


class ProfileError(ValueError):
    """An unknown or unusable profile name."""


@dataclass(frozen=True)
class Recipe:
    """Training sizes for one lesson: LoRA shape, optimizer, batch, length and steps."""

    lora_r: int
    lora_alpha: int
    lora_dropout: float
    learning_rate: float
    max_steps: int
    batch_size: int
    grad_accum: int
    cutoff: int
    warmup_steps: int
    save_steps: int
    train_rows: int | None = None  # None: every row of the data set
    eval_rows: int = 20
    checkpointing: bool = True  # activation checkpointing; helpers.cost.plan_batch turns it off where memory allows

    @property
    def rows_per_step(self) -> int:
        """Rows per optimizer step: the micro-batch times gradient accumulation."""
        return self.batch_size * self.grad_accum

    @property
    def eval_steps(self) -> int:
        """How often the held-out loss is computed during training: every ``max_steps // 2`` steps (about twice)."""
        return max(1, self.max_steps // 2)


def larger_batch(recipe: Recipe, rows_per_step: int) -> Recipe:
    """The same rows (same epochs) in fewer, larger optimizer steps: the faster recipe a lesson offers.

    Steps shrink by the factor k = new rows per step / old; the learning rate grows by sqrt(k) (the square-root rule
    for Adam: the gradient's noise falls with sqrt(k)), warm-up and checkpoint spacing shrink by k.
    """
    factor = rows_per_step / recipe.rows_per_step
    return replace(recipe, batch_size=rows_per_step, grad_accum=1,
                   max_steps=max(1, round(recipe.max_steps / factor)),
                   learning_rate=float(f"{recipe.learning_rate * math.sqrt(factor):.2g}"),
                   warmup_steps=round(recipe.warmup_steps / factor),
                   save_steps=max(1, round(recipe.save_steps / factor)))


@dataclass(frozen=True)
class Profile:
    """Everything that differs between the tiny and the gpu run of the course."""

    name: str
    model_id: str
    compute_dtype: str  # "float32" on CPU; "bfloat16" on GPU (fp16 where bf16 is missing)
    max_new_tokens: int
    recipes: dict[str, Recipe]
    max_shard_size: str = "2GB"  # merged models are saved in safetensors shards of this size
    seed: int = 42
    lora_targets: tuple[str, ...] | str = SEVEN_PROJECTIONS  # "all-linear" for a model outside the table
    faster_rows: dict[str, int] | None = None  # lesson -> rows per optimizer step of its faster recipe
    default_model_id: str = ""  # the profile's own model; set when COURSE_MODEL replaced it
    shipped_data: bool = False  # gpu profile on the shipped rows (COURSE_SHIPPED_DATA=1), not the full data sets

    @property
    def is_tiny(self) -> bool:
        return self.name == "tiny"

    @property
    def run_name(self) -> str:
        """Names this profile's outputs: ``gpu``, ``gpu-qwen2.5-7b-instruct`` when COURSE_MODEL chose the model,
        ``gpu-shipped`` on the shipped rows (a later run on the full data never reuses that adapter)."""
        name = f"{self.name}-shipped" if self.shipped_data else self.name
        if not self.default_model_id or self.model_id == self.default_model_id:
            return name
        slug = re.sub(r"[^a-z0-9.]+", "-", self.model_id.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")
        return f"{name}-{slug}"

    def recipe(self, lesson: str) -> Recipe:
        """The training recipe of a lesson: ``nekoqa``, ``tang``, ``huanhuan`` or ``nekoqa_dpo`` (lesson 09)."""
        if lesson not in self.recipes:
            known = ", ".join(self.recipes)
            raise ProfileError(f"没有课程 {lesson!r} 的配方 / no recipe for {lesson!r}; known: {known}")
        return self.recipes[lesson]

    def faster_recipe(self, lesson: str) -> Recipe:
        """The lesson's recipe with more rows per optimizer step and proportionally fewer steps (``larger_batch``)."""
        return larger_batch(self.recipe(lesson), (self.faster_rows or {})[lesson])


# Tiny: a 135M model, 4 steps of 2 rows on CPU (about a minute on one core), a high learning rate so a short run
# shows learning; 4 held-out rows. Sized for `make test` on 2 cores (the README says how long it takes): each held-out
# pass costs about as much as a training step, so both are kept small.
TINY_RECIPE = Recipe(lora_r=8, lora_alpha=16, lora_dropout=0.0, learning_rate=2e-3, max_steps=4, batch_size=2,
                     grad_accum=1, cutoff=192, warmup_steps=1, save_steps=2, eval_rows=4)

# DPO (lesson 09) on top of the NekoQA SFT adapter: short pairs, few steps, so it fits the tiny time budget; the
# preference accuracy is measured on the first 14 held-out pairs. No activation checkpointing: on CPU it only costs
# time (what plan_batch decides for the SFT lessons; DPO's batch is not planned).
TINY_DPO_RECIPE = Recipe(lora_r=8, lora_alpha=16, lora_dropout=0.0, learning_rate=1e-3, max_steps=4, batch_size=2,
                         grad_accum=1, cutoff=96, warmup_steps=1, save_steps=2, eval_rows=14, checkpointing=False)

# GPU: the original tutorials' recipes (see the lessons for their sources).
GPU_RECIPES = {
    "nekoqa": Recipe(lora_r=32, lora_alpha=32, lora_dropout=0.05, learning_rate=2e-4, max_steps=150, batch_size=2,
                     grad_accum=4, cutoff=2048, warmup_steps=5, save_steps=50),
    "tang": Recipe(lora_r=8, lora_alpha=16, lora_dropout=0.05, learning_rate=3e-4, max_steps=65, batch_size=4,
                   grad_accum=4, cutoff=256, warmup_steps=50, save_steps=20, train_rows=1040),
    "huanhuan": Recipe(lora_r=8, lora_alpha=32, lora_dropout=0.1, learning_rate=1e-4, max_steps=700, batch_size=4,
                       grad_accum=4, cutoff=384, warmup_steps=20, save_steps=100),
    # DPO on top of the NekoQA SFT adapter (lesson 09): a much smaller learning rate than SFT.
    "nekoqa_dpo": Recipe(lora_r=32, lora_alpha=32, lora_dropout=0.05, learning_rate=2e-5, max_steps=100,
                         batch_size=2, grad_accum=4, cutoff=1024, warmup_steps=10, save_steps=50, eval_rows=28),
}

# Faster recipes (larger_batch): about 9k tokens per optimizer step on the course data, where one H200 step of the
# default 1.5B model reached 9-12k real tokens/s (benchmarks/results/gpu-nvidia-h200.json). Tiny: 2x, to compare.
GPU_FASTER_ROWS = {"nekoqa": 64, "tang": 64, "huanhuan": 128}
TINY_FASTER_ROWS = dict.fromkeys(SFT_LESSONS, 4)

# COURSE_SHIPPED_DATA=1: the gpu profile trains on the course's shipped rows (a rehearsal when the full data sets
# cannot be downloaded) for at most this many passes over them: the full-data step counts would be 6-70 passes.
SHIPPED_DATA_ENV = "COURSE_SHIPPED_DATA"
SHIPPED_EPOCHS = 3  # LLaMA-Factory's default num_train_epochs


def within_epochs(recipe: Recipe, rows: int, epochs: int = SHIPPED_EPOCHS) -> Recipe:
    """``recipe`` with at most ``epochs`` passes over ``rows`` rows: fewer steps, warm-up and checkpoints scaled."""
    steps = min(recipe.max_steps, math.ceil(epochs * rows / recipe.rows_per_step))
    factor = steps / recipe.max_steps
    return replace(recipe, max_steps=steps, warmup_steps=round(recipe.warmup_steps * factor),
                   save_steps=max(1, round(recipe.save_steps * factor)))


def on_shipped_data(profile: Profile) -> Profile:
    """The gpu profile trained on the shipped rows: each SFT recipe cut to ``SHIPPED_EPOCHS`` passes over them."""
    from helpers.data import shipped_row_count  # `import helpers` stays light: `python -m helpers.data` runs clean

    recipes = {lesson: within_epochs(recipe, shipped_row_count(lesson)) if lesson in SFT_LESSONS else recipe
               for lesson, recipe in profile.recipes.items()}
    return replace(profile, recipes=recipes, shipped_data=True)


# Your own data set (``scripts/train.py --data``) trains with lesson 03's recipe, the general chat one: LoRA on every
# projection, and on the gpu profile r=32, 150 steps of 8 rows, cutoff 2048 (change them with --max-steps, --cutoff).
OWN_DATA_RECIPE = "nekoqa"

PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        model_id=TINY_MODEL_ID,
        compute_dtype="float32",
        max_new_tokens=32,  # about a dozen Chinese characters: enough to see the mechanics, and cheap on CPU
        recipes={**dict.fromkeys(SFT_LESSONS, TINY_RECIPE), "nekoqa_dpo": TINY_DPO_RECIPE},
        max_shard_size="200MB",  # small shards so the tiny run shows what sharding looks like
        faster_rows=TINY_FASTER_ROWS,
    ),
    "gpu": Profile(
        name="gpu",
        model_id=GPU_MODEL_ID,
        compute_dtype="bfloat16",
        max_new_tokens=256,
        recipes=GPU_RECIPES,
        faster_rows=GPU_FASTER_ROWS,
    ),
}


def cuda_available() -> bool:
    """True when torch is installed and sees a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def with_model(profile: Profile, model_id: str) -> Profile:
    """The profile training ``model_id`` instead, with its LoRA targets (the batch split is planned per card)."""
    return replace(profile, model_id=model_id, lora_targets=lora_targets(model_id),
                   default_model_id=profile.default_model_id or profile.model_id)


def get_profile(name: str | None = None, model: str | None = None) -> Profile:
    """The named profile (default: ``COURSE_PROFILE`` or the hardware) with ``model`` (default: ``COURSE_MODEL``)."""
    name = name or os.environ.get(PROFILE_ENV) or ("gpu" if cuda_available() else "tiny")
    key = name.strip().lower()
    if key not in PROFILES:
        known = ", ".join(PROFILES)
        raise ProfileError(
            f"未知的课程配置 {name!r}：请把环境变量 {PROFILE_ENV} 设为 {known} 之一（或删除它）。\n"
            f"Unknown course profile {name!r}: set {PROFILE_ENV} to one of {known} (or unset it)."
        )
    profile = PROFILES[key]
    if not profile.is_tiny and os.environ.get(SHIPPED_DATA_ENV) == "1":
        profile = on_shipped_data(profile)
    model = model or chosen_model()
    return with_model(profile, model) if model else profile


def use_model(model: str | None = None) -> Profile:
    """A notebook's first cell: ``model`` (when given) becomes this kernel's COURSE_MODEL; print profile and model."""
    if model:
        os.environ[MODEL_ENV] = model  # every helper in this kernel reads it
    profile = get_profile()
    data = "（课程自带的数据 / shipped rows, COURSE_SHIPPED_DATA=1）" if profile.shipped_data else ""
    print(f"课程配置 profile = {profile.name}{data} | 模型 model = {profile.model_id}")
    return profile

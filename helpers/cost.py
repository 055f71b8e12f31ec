"""What a training lesson costs on a GPU, said before it runs; a batch split that fits; a clear refusal when not.

- ``plan_batch`` splits a recipe's rows per optimizer step into as few micro-steps as the card holds (a QLoRA
  micro-step costs ~0.6 s on an H200 whatever its size, so one full micro-step beats many small ones), turns
  activation checkpointing off where memory allows, prints the plan and the memory estimate (``helpers.memory``), and
  raises ``MemoryFitError`` with what to lower when even one row per micro-step does not fit.
- ``out_of_memory_error`` turns a CUDA out-of-memory during training into the same advice, naming the last
  complete checkpoint to resume from.
- ``cost_table`` gives a lesson's steps, rows, tokens, wall time and peak memory on a 24 GB card for the default gpu
  model and a 7B model, for the lesson's recipe and its faster recipe. Time = micro-steps x (fixed cost per
  micro-step + 6 x parameters x tokens / effective FLOP/s), both fitted to the committed GPU measurements
  (``benchmarks/results/gpu-*.json``, ``step_cost``); another card keeps the fixed cost and scales the FLOP/s by its
  bf16 peak (an estimate: the 24 GB card itself was never measured). Tokens come from the shipped rows' characters.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import torch

from helpers.data import load_preferences
from helpers.memory import GIB, MemoryEstimate, Settings, estimate
from helpers.models import MODELS, ModelShape, find_model
from helpers.paths import REPO_ROOT
from helpers.profiles import GPU_MODEL_ID, Recipe, get_profile
from helpers.registry import LESSONS, is_preference
from helpers.splits import shipped_conversations

HEADROOM = 0.95  # refuse above 95% of the card: the allocator needs some slack of its own


@dataclass(frozen=True)
class Card:
    """A GPU: its memory and its dense bf16 tensor throughput from the vendor's sheet."""

    name: str
    memory_bytes: int
    bf16_flops: float


RTX_4090 = Card("RTX 4090 24GB", 24 * GIB, 165e12)
# The card the course was measured on; its bf16 peak is the SXM sheet's (the lent card's variant was not shown).
H200 = Card("NVIDIA H200", int(139.8 * GIB), 989e12)
MEASURED = REPO_ROOT / "benchmarks" / "results" / "gpu-nvidia-h200.json"  # what step_cost is fitted to
TOKENS_PER_CHAR = 1.0  # Qwen's and Llama-3's tokenizers give ~0.7-1 token per Chinese character: the upper end
TOKENS_PER_TURN = 6  # role header and end-of-turn tokens of a ChatML / Llama-3 turn
FLOPS_PER_TOKEN = 6  # x parameters: forward 2N, backward through the frozen base 2N, checkpointing's recompute 2N
SEVEN_B = "Qwen/Qwen2.5-7B-Instruct"
PLAN_SHARE = 0.85  # plan_batch: a micro-batch whose estimate stays under this share of the card
NO_CHECKPOINT_SHARE = 0.7  # and checkpointing off only when the estimate without it stays under this share


class MemoryFitError(RuntimeError):
    """A training run that will not fit (or did not fit) in GPU memory; the message says what to lower."""


def lesson_settings(lesson: str, recipe: Recipe, gpu: bool = True, lengths: list[int] | None = None) -> Settings:
    """The estimator's settings for a lesson's micro-batch: DPO scores chosen and rejected rows together, with whole
    logits. ``lengths``: the training rows' token counts; the micro-batch then holds the longest of them (default:
    every row at the cutoff).
    """
    settings = Settings.for_recipe(recipe, gpu=gpu)
    if lengths and not is_preference(lesson):
        longest = sorted(lengths)[-recipe.batch_size:]
        settings = replace(settings, length=min(recipe.cutoff, math.ceil(sum(longest) / len(longest))))
    if is_preference(lesson):
        settings = replace(settings, batch_size=2 * recipe.batch_size, chunked_loss=False)
    return settings


def gpu_memory() -> tuple[str, int] | None:
    """Name and total memory of GPU 0, or None without a CUDA GPU."""
    if not torch.cuda.is_available():
        return None
    properties = torch.cuda.get_device_properties(0)
    return properties.name, properties.total_memory


def needed_bytes(shape: ModelShape, lesson: str, recipe: Recipe, lengths: list[int] | None = None) -> int:
    return estimate(shape, lesson_settings(lesson, recipe, lengths=lengths)).total


def planned_recipe(shape: ModelShape, lesson: str, recipe: Recipe, capacity: int,
                   lengths: list[int] | None = None) -> Recipe:
    """``recipe`` with its rows per optimizer step in the fewest micro-steps that fit ``capacity`` bytes.

    The largest micro-batch dividing the rows per step whose estimate stays under ``PLAN_SHARE`` of the card; then
    checkpointing off if the estimate without it stays under ``NO_CHECKPOINT_SHARE``. Nothing fits: ``recipe``.
    """
    rows = recipe.rows_per_step
    for micro in (size for size in range(rows, 0, -1) if rows % size == 0):
        planned = replace(recipe, batch_size=micro, grad_accum=rows // micro, checkpointing=True)
        if needed_bytes(shape, lesson, planned, lengths) <= capacity * PLAN_SHARE:
            without = replace(planned, checkpointing=False)
            fits_without = needed_bytes(shape, lesson, without, lengths) <= capacity * NO_CHECKPOINT_SHARE
            return without if fits_without else planned
    return recipe


def plan_batch(model: Path | str | ModelShape, lesson: str, recipe: Recipe, lengths: list[int] | None = None,
               capacity: int | None = None, gpu_name: str = "GPU") -> Recipe:
    """Before loading: the recipe split into micro-batches for this card (``planned_recipe``), printed and checked.

    ``lengths``: the encoded training rows' token counts. ``capacity``: bytes of GPU memory (default: GPU 0's).
    Without a GPU the rows per step stay as they are, activation checkpointing is switched off (RAM is not the limit
    of a CPU run; without recomputing, the tiny steps train 1.3-1.4x the tokens/s for about 0.7 GiB more peak RSS:
    ``benchmarks/checkpointing.py``) and the GPU estimate is printed. Raises ``MemoryFitError`` with what to lower.
    """
    shape = model if isinstance(model, ModelShape) else model_shape(model)
    if capacity is None and (found := gpu_memory()):
        gpu_name, capacity = found
    if capacity is None:
        check_fits(shape, lesson, recipe, capacity, gpu_name, lengths)  # what the recipe as written needs on a GPU
        print("CPU：激活检查点关（内存不是瓶颈，重算只会更慢）/ activation checkpointing off on CPU (RAM is not the "
              "limit; recomputing only costs time)")
        return replace(recipe, checkpointing=False)
    planned = planned_recipe(shape, lesson, recipe, capacity, lengths)
    checkpointing = "开 on" if planned.checkpointing else "关 off（显存够，不必重算 / it fits without)"
    print(f"批的拆分 / batch split on {gpu_name}: 每步 {planned.rows_per_step} 条 = {planned.batch_size} x "
          f"{planned.grad_accum}（micro-batch x 梯度累积 gradient accumulation）| 激活检查点 / activation "
          f"checkpointing {checkpointing}")
    check_fits(shape, lesson, planned, capacity, gpu_name, lengths)
    return planned


def advice(shape: ModelShape, lesson: str, recipe: Recipe, capacity: int) -> str:
    """What to lower, in order: the micro-batch (raising accumulation), the cutoff, then the model."""
    limit = capacity * HEADROOM
    effective = recipe.rows_per_step
    lines = []
    for batch in range(recipe.batch_size - 1, 0, -1):
        lowered = replace(recipe, batch_size=batch, grad_accum=effective // batch, checkpointing=True)
        if effective % batch == 0 and needed_bytes(shape, lesson, lowered) <= limit:
            lines.append(f"  - per_device_train_batch_size={batch}, gradient_accumulation_steps={effective // batch}"
                         f"（总批量不变 / same effective batch {effective}）")
            break
    for cutoff in (recipe.cutoff * 3 // 4, recipe.cutoff // 2, recipe.cutoff // 4):
        lowered = replace(recipe, batch_size=1, cutoff=cutoff, checkpointing=True)
        if needed_bytes(shape, lesson, lowered) <= limit:
            lines.append(f"  - 截断长度 / cutoff (max_length) {cutoff}，批大小 / batch 1")
            break
    seed = get_profile("gpu").recipe(lesson)  # each smaller model planned for this card, as plan_batch would
    smaller = sorted((model for model in MODELS.values()
                      if model.shape.parameters() < shape.parameters() and "SmolLM2" not in model.hf_id
                      and needed_bytes(model.shape, lesson, planned_recipe(model.shape, lesson, seed, capacity))
                      <= limit), key=lambda model: model.shape.parameters())
    if smaller:  # the largest that fits
        lines.append(f"  - 换小一点的模型 / a smaller model: COURSE_MODEL={smaller[-1].hf_id}")
    return "\n".join(lines) or "  - 换一块显存更大的 GPU / use a GPU with more memory"


def check_fits(model: Path | str | ModelShape, lesson: str, recipe: Recipe, capacity: int | None = None,
               gpu_name: str = "GPU", lengths: list[int] | None = None) -> MemoryEstimate:
    """Print the memory estimate for this model and recipe; raise MemoryFitError when it exceeds the GPU.

    ``model``: a model folder (its config.json), a known model id, or a shape. ``capacity``: bytes of GPU memory
    (default: what GPU 0 has; without a GPU the estimate is printed for the gpu profile's settings and not checked).
    ``lengths``: the training rows' token counts (default: every row at the cutoff).
    """
    shape = model if isinstance(model, ModelShape) else model_shape(model)
    if capacity is None and (found := gpu_memory()):
        gpu_name, capacity = found
    needed = estimate(shape, lesson_settings(lesson, recipe, lengths=lengths))
    need, batch = f"{needed.total / GIB:.1f} GiB", f"{recipe.batch_size} x {recipe.cutoff} token"
    if capacity is None:
        print(f"显存估算 / GPU memory estimate: {need}（{batch}，QLoRA bf16；本机没有 GPU，不检查 / no GPU here)")
        return needed
    have = f"{capacity / GIB:.1f} GiB"
    print(f"显存估算 / GPU memory estimate: {need}（{batch}）| {gpu_name}: {have}")
    if needed.total > capacity * HEADROOM:
        raise MemoryFitError(
            f"预计需要 {need} 显存，{gpu_name} 只有 {have}：训练会中途 CUDA out of memory。请降低下面任意一项再运行 / "
            f"This run needs about {need}, {gpu_name} has {have}: it would run out of memory. Lower one of these:\n"
            f"{advice(shape, lesson, recipe, capacity)}"
        )
    return needed


def model_shape(model: Path | str) -> ModelShape:
    """A model's shape: from its folder's config.json, or from the table for a known id."""
    folder = Path(model).expanduser()
    if (folder / "config.json").is_file():
        return ModelShape.from_config(folder)
    known = find_model(str(model))
    if known is None:
        raise MemoryFitError(f"不知道 {model} 的结构：请传入模型文件夹 / unknown model {model}: pass its folder")
    return known.shape


GENERIC_ADVICE = "\n".join((
    "  - per_device_train_batch_size 减半、gradient_accumulation_steps 加倍 / halve the batch, double the accumulation",
    "  - 减小截断长度 / lower the cutoff (max_length)",
    "  - 换小一点的模型 / a smaller model",
))


def out_of_memory_error(lesson: str, recipe: Recipe | None, shape: ModelShape,
                        checkpoint: str | None) -> MemoryFitError:
    """The advice for a CUDA out-of-memory that happened during training, and where the run resumes."""
    if recipe is None:
        lowered = GENERIC_ADVICE
    else:
        needed = estimate(shape, lesson_settings(lesson, recipe)).total
        lowered = advice(shape, lesson, recipe, min(found[1], needed) if (found := gpu_memory()) else needed)
    resume = (f"已保存的检查点 {Path(checkpoint).name} 完好，改小后重新运行会从它继续 / the saved checkpoint "
              f"{Path(checkpoint).name} is intact: rerun after lowering and training resumes from it."
              if checkpoint else "还没有保存检查点 / no checkpoint had been saved yet.")
    return MemoryFitError(
        f"训练中显存不足（CUDA out of memory）/ CUDA ran out of memory during training. {resume}\n"
        f"请降低下面任意一项 / lower one of these:\n{lowered}"
    )


@dataclass(frozen=True)
class StepCost:
    """Seconds per micro-step = ``fixed_s`` + FLOPS_PER_TOKEN x parameters x tokens / ``flops``."""

    fixed_s: float
    flops: float
    card: Card
    runs: int  # how many steady-state runs the fit used

    def seconds(self, parameters: int, tokens: float) -> float:
        return self.fixed_s + FLOPS_PER_TOKEN * parameters * tokens / self.flops

    def on(self, card: Card) -> StepCost:
        """The same cost on another card: the fixed part kept, the FLOP/s scaled by the ratio of bf16 peaks."""
        return replace(self, flops=self.flops * card.bf16_flops / self.card.bf16_flops, card=card)


def fitted_runs(results: Path = MEASURED) -> list[dict]:
    """The steady-state runs of the default GPU path: padding-free, sdpa, checkpointing, under ~12k tokens a step."""
    runs = json.loads(results.read_text(encoding="utf-8"))["runs"]
    return [run for run in runs if run.get("seconds_per_step") and run["pipeline"] == "padding_free"
            and run["attention"] == "sdpa" and run["checkpointing"] and not run["liger"] and run["max_tokens"] < 12000]


@cache
def step_cost(results: Path = MEASURED) -> StepCost:
    """Least-squares fit of seconds per micro-step against FLOPS_PER_TOKEN x parameters x tokens (``fitted_runs``)."""
    points = [(FLOPS_PER_TOKEN * find_model(run["model"]).shape.parameters() * run["tokens_per_step"],
               run["seconds_per_step"]) for run in fitted_runs(results)]
    intercept, slope = straight_line(points)
    return StepCost(fixed_s=intercept, flops=1 / slope, card=H200, runs=len(points))


def straight_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares intercept and slope of y against x."""
    mean_x, mean_y = sum(x for x, _ in points) / len(points), sum(y for _, y in points) / len(points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    return mean_y - slope * mean_x, slope


@cache  # one read of the data per lesson, however many models and recipes a cost table lists
def row_lengths(lesson: str) -> tuple[tuple[int, int], ...]:
    """Estimated (prompt, reply) tokens of each training row of the shipped data (a pair for DPO), from characters."""
    if is_preference(lesson):
        rows = [pair["prompt"] + pair["chosen"] + pair["rejected"] for pair in load_preferences("train")]
    else:
        rows = shipped_conversations(lesson, "train")

    def tokens(messages: list[dict]) -> int:
        return round(sum(len(message["content"]) * TOKENS_PER_CHAR + TOKENS_PER_TURN for message in messages))

    return tuple((tokens(row[:-1]), tokens(row[-1:])) for row in rows)


def shipped_lengths(lesson: str) -> list[int]:
    """Estimated tokens of each shipped training row: the lengths ``plan_batch`` splits a cost table's batch by."""
    return [prompt + reply for prompt, reply in row_lengths(lesson)]


def row_tokens(lesson: str) -> float:
    """Estimated mean tokens of one training row of the shipped data."""
    lengths = shipped_lengths(lesson)
    return sum(lengths) / len(lengths)


def lesson_cost(lesson: str, model_id: str, card: Card = RTX_4090, faster: bool = False) -> dict[str, float]:
    """Steps, rows, tokens, wall time (s), peak memory (GiB) and batch split of a lesson's gpu recipe on ``card``.

    ``faster``: the lesson's faster recipe (``Profile.faster_recipe``). The batch split is ``plan_batch``'s for this
    model and card, on the shipped rows' estimated lengths.
    """
    profile = get_profile("gpu", model=model_id)
    shape = find_model(model_id).shape
    lengths = shipped_lengths(lesson)
    seed = profile.faster_recipe(lesson) if faster else profile.recipe(lesson)
    recipe = planned_recipe(shape, lesson, seed, card.memory_bytes, lengths)
    rows = recipe.max_steps * recipe.rows_per_step
    row = min(row_tokens(lesson), recipe.cutoff * (2 if is_preference(lesson) else 1))
    reference = 2 / FLOPS_PER_TOKEN if is_preference(lesson) else 0  # DPO's reference model: one more forward
    micro_steps = recipe.max_steps * recipe.grad_accum
    cost = step_cost().on(card)
    seconds = micro_steps * cost.seconds(round(shape.parameters() * (1 + reference)), recipe.batch_size * row)
    return {"steps": recipe.max_steps, "rows": rows, "tokens": round(rows * row), "seconds": seconds,
            "peak_gib": needed_bytes(shape, lesson, recipe, lengths) / GIB,
            "batch": f"{recipe.batch_size}x{recipe.grad_accum}", "checkpointing": recipe.checkpointing,
            "learning_rate": recipe.learning_rate}


def minutes(seconds: float) -> str:
    """A duration as the tables print it: never "0 minutes"."""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{max(1, round(seconds))} s"


def cost_table(lesson: str, models: tuple[str, ...] = (GPU_MODEL_ID, SEVEN_B), card: Card = RTX_4090) -> str:
    """A lesson's cost for the default gpu model and a 7B model, its recipe and its faster one, on ``card``."""
    cost = step_cost()
    lines = [f"第 {LESSONS[lesson].number} 课（{lesson}）在 {card.name} 上的开销 / cost. 时间按 H200 实测拟合、"
             f"按 bf16 峰值换算到这块卡，是估算 / time fitted to {cost.runs} H200 runs, scaled to this card by bf16 "
             "peak: an estimate (helpers/cost.py)",
             f"{'模型 / model':<27}{'配方 recipe':<12}{'批 batch':>9}{'ckpt':>6}{'lr':>9}{'步数 steps':>11}"
             f"{'样本 rows':>10}{'token':>10}{'时间 time':>11}{'显存 peak':>11}"]
    variants = (False, True) if lesson in (get_profile("gpu").faster_rows or {}) else (False,)
    for model_id in models:
        for faster in variants:
            row = lesson_cost(lesson, model_id, card, faster)
            lines.append(f"{model_id.rsplit('/', 1)[-1]:<29}{'faster' if faster else 'seed':<12}{row['batch']:>10}"
                         f"{'on' if row['checkpointing'] else 'off':>6}{row['learning_rate']:>9.1e}{row['steps']:>11}"
                         f"{row['rows']:>11}{row['tokens']:>11,}{minutes(row['seconds']):>11}"
                         f"{row['peak_gib']:>8.1f} GiB")
    return "\n".join(lines)

"""What a training lesson costs on a GPU, said before it runs; and a clear refusal when it will not fit.

- ``check_fits`` prints the memory estimate (``helpers.memory``) for this model, recipe and GPU before the model is
  loaded, and raises ``MemoryFitError`` with what to lower when it exceeds the GPU.
- ``out_of_memory_error`` turns a CUDA out-of-memory during training into the same advice, naming the last
  complete checkpoint to resume from.
- ``cost_table`` gives a lesson's steps, rows seen, tokens, wall time and peak memory on a 24 GB card, for the
  default gpu model and a 7B model. Every figure is an estimate until ``benchmarks/gpu_check.py`` has measured it:
  memory from the estimator; tokens from the shipped rows' characters (``TOKENS_PER_CHAR``); time from
  ``FLOPS_PER_TOKEN`` x parameters x tokens at ``ASSUMED_UTILIZATION`` of the card's bf16 peak.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import torch

from helpers.data import load_preferences
from helpers.hub_data import course_conversations
from helpers.memory import GIB, MemoryEstimate, Settings, estimate
from helpers.models import MODELS, ModelShape, find_model
from helpers.profiles import GPU_MODEL_ID, Recipe, get_profile

DPO_LESSON = "nekoqa_dpo"
NOTEBOOKS = {"nekoqa": "03", "tang": "04", "huanhuan": "05", DPO_LESSON: "09"}
HEADROOM = 0.95  # refuse above 95% of the card: the allocator needs some slack of its own


@dataclass(frozen=True)
class Card:
    """A GPU as the cost table assumes it: memory and dense bf16 tensor throughput from the vendor's sheet."""

    name: str
    memory_bytes: int
    bf16_flops: float


RTX_4090 = Card("RTX 4090 24GB", 24 * GIB, 165e12)
# Estimates, to be replaced by measurements (benchmarks/gpu_check.py):
TOKENS_PER_CHAR = 1.0  # Qwen's and Llama-3's tokenizers give ~0.7-1 token per Chinese character: the upper end
TOKENS_PER_TURN = 6  # role header and end-of-turn tokens of a ChatML / Llama-3 turn
FLOPS_PER_TOKEN = 6  # x parameters: forward 2N, backward through the frozen base 2N, checkpointing's recompute 2N
ASSUMED_UTILIZATION = 0.2  # share of the bf16 peak QLoRA reaches (dequantizing NF4 in every matmul costs time)
SEVEN_B = "Qwen/Qwen2.5-7B-Instruct"


class MemoryFitError(RuntimeError):
    """A training run that will not fit (or did not fit) in GPU memory; the message says what to lower."""


def lesson_settings(lesson: str, recipe: Recipe, gpu: bool = True) -> Settings:
    """The estimator's settings for a lesson: DPO scores chosen and rejected rows together, with whole logits."""
    settings = Settings.for_recipe(recipe, gpu=gpu)
    if lesson == DPO_LESSON:
        settings = replace(settings, batch_size=2 * recipe.batch_size, chunked_loss=False)
    return settings


def gpu_memory() -> tuple[str, int] | None:
    """Name and total memory of GPU 0, or None without a CUDA GPU."""
    if not torch.cuda.is_available():
        return None
    properties = torch.cuda.get_device_properties(0)
    return properties.name, properties.total_memory


def advice(shape: ModelShape, lesson: str, recipe: Recipe, capacity: int) -> str:
    """What to lower, in order: the micro-batch (raising accumulation), the cutoff, then the model."""
    limit = capacity * HEADROOM
    effective = recipe.batch_size * recipe.grad_accum
    lines = []
    for batch in range(recipe.batch_size - 1, 0, -1):
        if effective % batch == 0 and estimate(shape, lesson_settings(lesson, replace(recipe, batch_size=batch))
                                               ).total <= limit:
            lines.append(f"  - per_device_train_batch_size={batch}, gradient_accumulation_steps={effective // batch}"
                         f"（总批量不变 / same effective batch {effective}）")
            break
    for cutoff in (recipe.cutoff * 3 // 4, recipe.cutoff // 2, recipe.cutoff // 4):
        if estimate(shape, lesson_settings(lesson, replace(recipe, batch_size=1, cutoff=cutoff))).total <= limit:
            lines.append(f"  - 截断长度 / cutoff (max_length) {cutoff}，批大小 / batch 1")
            break
    smaller = [model.hf_id for model in MODELS.values()  # each with the batches COURSE_MODEL would give it
               if model.shape != shape and "SmolLM2" not in model.hf_id and estimate(
                   model.shape, lesson_settings(lesson, get_profile("gpu", model=model.hf_id).recipe(lesson))
               ).total <= limit]
    if smaller:
        lines.append(f"  - 换小一点的模型 / a smaller model: COURSE_MODEL={smaller[-1]}")
    return "\n".join(lines) or "  - 换一块显存更大的 GPU / use a GPU with more memory"


def check_fits(model: Path | str | ModelShape, lesson: str, recipe: Recipe,
               capacity: int | None = None, gpu_name: str = "GPU") -> MemoryEstimate:
    """Print the memory estimate for this model and recipe; raise MemoryFitError when it exceeds the GPU.

    ``model``: a model folder (its config.json), a known model id, or a shape. ``capacity``: bytes of GPU memory
    (default: what GPU 0 has; without a GPU the estimate is printed for the gpu profile's settings and not checked).
    """
    shape = model if isinstance(model, ModelShape) else model_shape(model)
    if capacity is None and (found := gpu_memory()):
        gpu_name, capacity = found
    needed = estimate(shape, lesson_settings(lesson, recipe))
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


def row_lengths(lesson: str) -> list[tuple[int, int]]:
    """Estimated (prompt, reply) tokens of each training row of the shipped data (a pair for DPO), from characters."""
    if lesson == DPO_LESSON:
        rows = [pair["prompt"] + pair["chosen"] + pair["rejected"] for pair in load_preferences("train")]
    else:
        rows = course_conversations(lesson, "train", profile=get_profile("tiny"))

    def tokens(messages: list[dict]) -> int:
        return round(sum(len(message["content"]) * TOKENS_PER_CHAR + TOKENS_PER_TURN for message in messages))

    return [(tokens(row[:-1]), tokens(row[-1:])) for row in rows]


@cache  # one read of the data per lesson, however many models a cost table lists
def row_tokens(lesson: str) -> float:
    """Estimated mean tokens of one training row of the shipped data."""
    lengths = row_lengths(lesson)
    return sum(prompt + reply for prompt, reply in lengths) / len(lengths)


def lesson_cost(lesson: str, model_id: str, card: Card = RTX_4090) -> dict[str, float]:
    """Steps, rows seen, tokens, wall time (s) and peak memory (GiB) of a lesson's gpu recipe on ``card``."""
    profile = get_profile("gpu", model=model_id)
    recipe, shape = profile.recipe(lesson), find_model(model_id).shape
    rows = recipe.max_steps * recipe.batch_size * recipe.grad_accum
    tokens = rows * min(row_tokens(lesson), recipe.cutoff * (2 if lesson == DPO_LESSON else 1))
    reference = 2 / FLOPS_PER_TOKEN if lesson == DPO_LESSON else 0  # DPO's reference model: one more forward
    seconds = tokens * (FLOPS_PER_TOKEN + FLOPS_PER_TOKEN * reference) * shape.parameters() / (
        card.bf16_flops * ASSUMED_UTILIZATION)
    return {"steps": recipe.max_steps, "rows": rows, "tokens": round(tokens), "seconds": seconds,
            "peak_gib": estimate(shape, lesson_settings(lesson, recipe)).total / GIB,
            "batch": f"{recipe.batch_size}x{recipe.grad_accum}"}


def cost_table(lesson: str, models: tuple[str, ...] = (GPU_MODEL_ID, SEVEN_B), card: Card = RTX_4090) -> str:
    """A lesson's cost for the default gpu model and a 7B model, every figure marked as an estimate."""
    lines = [f"第 {NOTEBOOKS[lesson]} 课（{lesson}）在 {card.name} 上的开销，全部为估算 / estimated cost "
             "(how: helpers/cost.py; measured: benchmarks/gpu_check.py)",
             f"{'模型 / model':<30}{'批 / batch':>10}{'步数 steps':>11}{'样本 rows':>10}{'token':>10}"
             f"{'时间 time':>11}{'显存 peak':>11}"]
    for model_id in models:
        cost = lesson_cost(lesson, model_id, card)
        lines.append(f"{model_id.rsplit('/', 1)[-1]:<32}{cost['batch']:>10}{cost['steps']:>11}{cost['rows']:>11}"
                     f"{cost['tokens']:>11,}{cost['seconds'] / 60:>7.1f} min{cost['peak_gib']:>8.1f} GiB")
    return "\n".join(lines)

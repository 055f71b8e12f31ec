"""What later lessons need from the training lessons (03-05): their data, adapters and tuned models.

``train_lesson("nekoqa")`` runs the same steps as notebook 03 (same recipe, seed and helpers) and
saves the adapter where 03 saves it, so lesson 06 or 07 opened first still has an adapter to use.
"""

from __future__ import annotations

import math
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import lesson03_cells as cells
from helpers.cost import lesson_cost, minutes
from helpers.download import download_model
from helpers.encoding import encode_conversations
from helpers.evaluate import TASK_CHECKS, score, share, stopped_by_itself, write_predictions
from helpers.generation import base_then_tuned, generate_ids
from helpers.hardware import compute_dtype, device
from helpers.hub_data import course_conversations
from helpers.models import find_model
from helpers.paths import display_path, is_complete, one_at_a_time, outputs_dir
from helpers.profiles import Profile, Recipe, get_profile
from helpers.registry import LESSONS
from helpers.sft_run import PreparedRun, fit, prepare
from helpers.templates import Message, reply_label
from helpers.train import LossPlot, base_and_tuned_loss, load_model_4bit


def run_folder(lesson: str, profile: Profile, variant: str = "") -> str:
    """``<lesson>-<profile>``, or ``<lesson>-<profile>-<variant>`` for another recipe of the lesson (``faster``)."""
    return f"{lesson}-{profile.run_name}" + (f"-{variant}" if variant else "")


def adapter_dir(lesson: str, profile: Profile, variant: str = "") -> Path:
    """Where a training lesson saves its LoRA adapter: ``outputs/adapters/<lesson>-<profile>[-<variant>]``."""
    return outputs_dir("adapters", run_folder(lesson, profile, variant))


def checkpoint_dir(lesson: str, profile: Profile, variant: str = "") -> Path:
    return outputs_dir("checkpoints", run_folder(lesson, profile, variant))


def lesson_split(lesson: str, split: str, profile: Profile, recipe: Recipe | None = None) -> list[list[Message]]:
    """A lesson's ``train`` or ``eval`` conversations, as many as the recipe uses (``train_rows``, ``eval_rows``)."""
    recipe = recipe or profile.recipe(lesson)
    return course_conversations(lesson, split, recipe.train_rows if split == "train" else recipe.eval_rows, profile)


def encoded_split(lesson: str, split: str, tokenizer, profile: Profile) -> list[dict[str, list[int]]]:
    """A lesson's ``train`` or ``eval`` rows, encoded with the label mask at the recipe's cutoff."""
    return encode_conversations(tokenizer, lesson_split(lesson, split, profile), profile.recipe(lesson).cutoff)


def prepare_lesson(lesson: str, profile: Profile, recipe: Recipe | None = None) -> PreparedRun:
    """A lesson's run up to loading the model: its rows encoded, the batch split and memory estimate printed."""
    recipe = recipe or profile.recipe(lesson)
    return prepare(profile, lesson, lesson_split(lesson, "train", profile, recipe),
                   lesson_split(lesson, "eval", profile, recipe), recipe)


def save_adapter(trainer, tokenizer, target: Path) -> None:
    """Notebook 03's save cell: drop the marker, save adapter and tokenizer, then write the marker."""
    cells.save(adapter_path=target, trainer=trainer, tokenizer=tokenizer)


# Measured on the tiny profile, 2 CPU cores (notebooks 03-05, ``train_runtime`` plus loading): about a minute each.
TINY_TRAINING_TIME = "tiny 配置在 2 核 CPU 上约 1-2 分钟（实测）/ about 1-2 minutes on 2 CPU cores (measured)"


class MissingAdapterError(RuntimeError):
    """A lesson's adapter has not been trained yet; the message says how to train it and how long that takes."""


def training_time(lesson: str, profile: Profile) -> str:
    """How long training ``lesson``'s adapter takes: measured on tiny, the cost table's estimate on a GPU."""
    if profile.is_tiny:
        return TINY_TRAINING_TIME
    if find_model(profile.model_id) is None:
        return "见第 03 课开头的开销表 / see the cost table at the top of lesson 03"
    took = minutes(lesson_cost(lesson, profile.model_id)["seconds"])
    return f"在 24 GB 显卡上估计约 {took} / an estimated {took} on a 24 GB GPU"


def require_adapter(lesson: str, profile: Profile) -> Path:
    """The lesson's finished adapter, or MissingAdapterError: loading never starts a training run silently."""
    target = adapter_dir(lesson, profile)
    if is_complete(target):
        return target
    number = LESSONS[lesson].number
    raise MissingAdapterError(
        f"还没有 {lesson} 的适配器（{display_path(target)}）。先运行第 {number} 课，或在这里运行 "
        f"train_lesson({lesson!r}, profile)，或在终端里 python scripts/train.py --lesson {lesson}；"
        f"{training_time(lesson, profile)}。\n"
        f"No {lesson} adapter yet: run lesson {number}, or train_lesson({lesson!r}, profile), or "
        f"python scripts/train.py --lesson {lesson}."
    )


def train_lesson(lesson: str, profile: Profile | None = None, force: bool = False, plot: LossPlot | None = None,
                 recipe: Recipe | None = None, variant: str = "") -> Path:
    """The adapter of a training lesson: reuse a finished one, else train it as lesson 03 does (its # @save cells).

    ``force``: train anew even when a finished adapter exists. ``plot``: draws the training and held-out loss.
    ``recipe``: what to train (default: the profile's recipe for the lesson), e.g. the notebook's own, edited one.
    ``variant``: keep this run's adapter and checkpoints apart from the lesson's own (``"faster"``).
    """
    profile = profile or get_profile()
    target = adapter_dir(lesson, profile, variant)
    with one_at_a_time(target):  # a notebook run beside this one (lesson 07 beside 04) waits, then reuses it
        if is_complete(target) and not force:
            print(f"使用已训练的适配器 / reusing adapter {display_path(target)}")
            return target
        train_adapter(lesson, profile, target, plot, recipe or profile.recipe(lesson), variant)
    return target


def train_adapter(lesson: str, profile: Profile, target: Path, plot: LossPlot | None, recipe: Recipe,
                  variant: str = "") -> None:
    """Train ``lesson``'s adapter with ``recipe`` and save it to ``target``, marker last."""
    print(f"训练 {lesson} 的适配器 / training the {lesson} adapter: {recipe.max_steps} 步 steps, "
          f"{training_time(lesson, profile)}")
    run = prepare_lesson(lesson, profile, recipe)  # before loading: a run that cannot fit stops here
    plot = plot or LossPlot(title=lesson, live=False, keys=("loss", "eval_loss"))
    trainer = fit(run, profile, checkpoint_dir(lesson, profile, variant), callbacks=[plot], eval_during_training=True)
    save_adapter(trainer, run.tokenizer, target)


def load_tuned(lesson: str, profile: Profile | None = None, four_bit: bool = True) -> tuple[PeftModel, object]:
    """The lesson's adapter (``train_lesson`` it first) on its base, and the tokenizer.

    ``four_bit=True``: the NF4 base the adapter was trained on. ``False``: a 16-bit base (fp32 on CPU),
    which computes what the merged model computes (lesson 06) and generates much faster on CPU.
    """
    profile = profile or get_profile()
    adapter = require_adapter(lesson, profile)
    model_dir = download_model(profile=profile)
    if four_bit:
        base = load_model_4bit(model_dir, profile)
    else:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=compute_dtype(profile), device_map={"": device()})
    with one_at_a_time(adapter):  # not while lesson 04 or 05, run beside this one, rewrites it
        return PeftModel.from_pretrained(base, adapter), AutoTokenizer.from_pretrained(adapter)


def eos_ids(model, tokenizer) -> set[int]:
    """Every token id that ends a reply: the generation config's and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    configured = configured if isinstance(configured, list) else [configured]
    return {token for token in [*configured, tokenizer.eos_token_id] if token is not None}


def predict(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
            adapter_names: list[str] | None = None) -> list[dict]:
    """Greedy replies to each conversation's last user turn, as ``{prompt, predict, label, stopped}``.

    ``label`` follows LLaMA-Factory's ``generated_predictions.jsonl``: the reference reply through its end of turn,
    special tokens dropped (``reply_label``; ChatML keeps the newline after ``<|im_end|>``), so the two files score
    alike. ``adapter_names``: see ``generate_ids``.
    """
    prompts = [conversation[:-1] for conversation in conversations]
    generated = generate_ids(model, tokenizer, prompts, max_new_tokens, adapter_names)
    ends = eos_ids(model, tokenizer)
    return [
        {
            "prompt": tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
            "predict": tokenizer.decode(new_ids, skip_special_tokens=True).strip(),
            "label": reply_label(tokenizer, conversation),
            "stopped": stopped_by_itself(new_ids, ends, max_new_tokens),
        }
        for prompt, conversation, new_ids in zip(prompts, conversations, generated, strict=True)
    ]


def predict_base_and_tuned(model: PeftModel, tokenizer, conversations: list[list[dict]],
                           max_new_tokens: int) -> tuple[list[dict], list[dict]]:
    """``predict`` for the base (adapter off) and the tuned model, both from one batch (``base_then_tuned``)."""
    records = predict(model, tokenizer, conversations * 2, max_new_tokens, base_then_tuned(model, len(conversations)))
    return records[: len(conversations)], records[len(conversations):]


def metrics(lesson: str, records: list[dict], loss: float) -> dict[str, float]:
    """BLEU-4 / ROUGE as LLaMA-Factory computes them, held-out loss and perplexity, stop rate, task check."""
    row = {**score(records), "loss": round(loss, 4), "perplexity": round(math.exp(loss), 2),
           "stop_rate": share(record["stopped"] for record in records)}
    if check := LESSONS[lesson].task_check:
        row[check] = TASK_CHECKS[check](record["predict"] for record in records)
    return row


def predictions_dir(lesson: str, profile: Profile) -> Path:
    return outputs_dir("eval", f"{lesson}-{profile.run_name}")


def evaluate_lesson(lesson: str, profile: Profile | None = None) -> dict[str, dict[str, float]]:
    """Base vs tuned on a lesson's held-out rows; predictions saved as ``outputs/eval/<lesson>-<profile>/*.jsonl``."""
    profile = profile or get_profile()
    model, tokenizer = load_tuned(lesson, profile, four_bit=False)
    conversations = course_conversations(lesson, "eval", profile.recipe(lesson).eval_rows, profile)
    rows = encoded_split(lesson, "eval", tokenizer, profile)
    results = {}
    replies = predict_base_and_tuned(model, tokenizer, conversations, profile.max_new_tokens)
    for variant, records, loss in zip(("base", "tuned"), replies, base_and_tuned_loss(model, rows), strict=True):
        write_predictions(predictions_dir(lesson, profile) / f"{variant}.jsonl", records)
        results[variant] = metrics(lesson, records, loss)
    return results

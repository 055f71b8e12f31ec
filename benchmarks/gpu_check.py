"""The prepared GPU check of the course's gpu path: steady-state speed and memory of its QLoRA steps (issues 13, 21).

    python benchmarks/gpu_check.py             # on a CUDA GPU: both models (~6 min on one H200)
    python benchmarks/gpu_check.py --smoke     # on CPU: SmolLM2 cut to SMOKE_LAYERS layers, short runs (a test)

Only memory and speed are measured, so the weights are random: each model is built from the config.json committed in
``benchmarks/model_configs/`` (a machine lent for this reaches no hub), saved, and loaded back through the course's
own ``load_model_4bit``; every run trains through the course's ``sft_config`` / ``make_trainer`` on rows whose
lengths follow the course data (``helpers.cost.row_lengths``), padding-free. For each model, Huanhuan (the lesson
with the most steps) runs as:

- ``old default``: what the course shipped before this check's issue: ``packed_sdpa``, the recipe's 4 rows x 4
  accumulation, checkpointing, frozen embedding / head / norms in fp32;
- ``new default``: the recipe as ``helpers.cost.plan_batch`` splits it for this card, ``fastest_attention()``, Liger
  kernels when installed, frozen weights in bf16: what a student's run does now;
- ``faster``: the lesson's faster recipe (``Profile.faster_recipe``), planned the same way, with and without Liger,
  and with checkpointing switched the other way;
- ``scan``: 8, 32 and 128 rows per micro-step (sdpa, checkpointing, no Liger), for the fixed cost per micro-step;
- on CUDA, the faster recipe under PyTorch's ``flex_attention`` (its block mask skips the blocks between packed rows);

and, on the 7B model, NekoQA at its recipe (its memory target). Each run does ``WARMUP`` optimizer steps, then
``TIMED`` timed ones (the first steps of a run pay for kernel compilation and caching); it reports real (non-pad)
tokens/s, seconds per micro-step, ``torch.cuda.max_memory_allocated`` and the estimator's figure for its largest
micro-step. Last, the 7B adapter is merged into a bf16 base with ``helpers.merge.merge_adapter``.

Every finished run is written to ``benchmarks/results/gpu-<device>.json`` at once, in the schema of the committed
``gpu-nvidia-h200.json``; a run that fails (out of memory at one setting) is recorded with its error and the check
goes on; runs still waiting when ``--budget-s`` is spent are listed as skipped.

The GPU machine lacks the course's pins: fetch their wheels here once (``bash benchmarks/gpu_wheels.sh`` writes
``.whl/``), carry ``.whl`` along, and start the command there with
``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for helpers and benchmarks

from helpers.attention import PACKED_SDPA, fastest_attention  # noqa: E402
from helpers.cost import SEVEN_B, lesson_settings, plan_batch, row_lengths, shipped_lengths, straight_line  # noqa: E402
from helpers.memory import ModelShape, estimate  # noqa: E402
from helpers.merge import merge_adapter  # noqa: E402
from helpers.profiles import GPU_MODEL_ID, GPU_RECIPES, Recipe, get_profile  # noqa: E402
from helpers.templates import IGNORE_INDEX  # noqa: E402

CONFIGS = Path(__file__).parent / "model_configs"
RESULTS = Path(__file__).parent / "results"
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOKE_LAYERS = 4  # of SmolLM2's 30: the smoke run checks code paths, not speed (its estimates assume all 30)
WARMUP, TIMED = 2, 6  # optimizer steps per run: excluded, then timed
SCAN_ROWS = (8, 32, 128)
# A template of the right shape: the check never decodes text, but the course refuses a tokenizer without one.
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>{% endfor %}"
CUDA = torch.cuda.is_available()


@dataclass(frozen=True)
class Setting:
    """One run: a label, the lesson and recipe, and the attention, Liger and frozen-weight dtype it trains with."""

    label: str
    lesson: str
    recipe: Recipe
    attention: str
    liger: bool
    frozen_dtype: torch.dtype


def materialize(model_id: str, folder: Path, dtype: torch.dtype, layers: int | None = None) -> ModelShape:
    """A random-weight model of ``model_id``'s committed config, saved with a stand-in tokenizer into ``folder``.

    ``layers``: keep only this many transformer blocks (the smoke run: every code path, a fraction of the work).
    """
    config_dir = CONFIGS / model_id.replace("/", "--")
    config = AutoConfig.from_pretrained(config_dir)
    config.num_hidden_layers = layers or config.num_hidden_layers
    with torch.device("cuda" if CUDA else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    del model
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                        pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return shape_of(model_id)


def lesson_rows(lesson: str, count: int, cutoff: int, vocab_size: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """``count`` rows of random tokens with the course data's prompt / reply lengths, cut to ``cutoff``."""
    rng = random.Random(seed)
    lengths = row_lengths(lesson)
    rows = []
    for _ in range(count):
        prompt, reply = rng.choice(lengths)
        prompt, reply = min(prompt, cutoff - 1), max(1, min(reply, cutoff - min(prompt, cutoff - 1)))
        ids = [rng.randrange(3, vocab_size) for _ in range(prompt + reply)]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                     "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def estimated_mib(run: dict) -> float:
    """The estimator's peak for a recorded run's largest micro-step, without the CUDA context the allocator skips."""
    recipe = replace(GPU_RECIPES[run["lesson"]], lora_r=run["lora_r"], cutoff=run["cutoff"],
                     batch_size=run["rows_per_step"], checkpointing=run["checkpointing"])
    settings = lesson_settings(run["lesson"], recipe, gpu=True)
    settings = replace(settings, length=math.ceil(run["max_tokens"] / run["rows_per_step"]),
                       upcast_frozen=run["frozen_dtype"] == "float32")
    parts = estimate(shape_of(run["model"]), settings)
    return (parts.total - parts.overhead) / 2**20


def shape_of(model_id: str) -> ModelShape:
    return ModelShape.from_config(CONFIGS / model_id.replace("/", "--"))


def set_frozen_dtype(model, dtype: torch.dtype) -> None:
    """Frozen non-4-bit weights (embeddings, head, norms) to ``dtype``: fp32 is what the course did before."""
    for param in model.parameters():
        if not param.requires_grad and type(param).__name__ != "Params4bit" and param.is_floating_point():
            param.data = param.data.to(dtype)


class Clock(TrainerCallback):
    """Seconds of each optimizer step (forward, backward, update), the device synchronized at both ends."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if CUDA:
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if CUDA:
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self._start)


class Count:
    """The trainer's collator, counting each micro-step's real tokens."""

    def __init__(self, collate) -> None:
        self.collate, self.tokens = collate, []

    def __call__(self, examples: list[dict]) -> dict:
        self.tokens.append(sum(len(example["input_ids"]) for example in examples))
        return self.collate(examples)


def train_steps(model, tokenizer, shape: ModelShape, setting: Setting, warmup: int, timed: int, scratch: Path) -> dict:
    """One setting's run; the base model (its LoRA layers removed) is ``result["model"]``."""
    from helpers.train import lora_config, make_trainer, sft_config  # after materialize: the course's own cells

    recipe = replace(setting.recipe, max_steps=warmup + timed, warmup_steps=0)
    rows = lesson_rows(setting.lesson, recipe.max_steps * recipe.rows_per_step, recipe.cutoff, shape.vocab_size)
    model.set_attn_implementation(setting.attention)
    set_frozen_dtype(model, setting.frozen_dtype)
    if not recipe.checkpointing:  # the trainer only switches it on: a model reused from a checkpointed run keeps it
        model.gradient_checkpointing_disable()
    dtype = torch.bfloat16 if CUDA else torch.float32
    args = replace(sft_config(recipe, scratch, dtype, 0), save_strategy="no", report_to=[], disable_tqdm=True,
                   use_liger_kernel=setting.liger, logging_steps=1)
    clock = Clock()
    trainer = make_trainer(model, tokenizer, rows, lora_config(recipe), args, callbacks=[clock])
    for quiet in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(quiet)
    counter = trainer.data_collator = Count(trainer.data_collator)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    micro = recipe.grad_accum
    timed_tokens = counter.tokens[warmup * micro:]
    seconds = sum(clock.seconds[warmup:])
    run = {
        "source": "gpu_check.py", "label": setting.label, "model": "", "lesson": setting.lesson,
        "pipeline": "padding_free", "attention": setting.attention, "rows_per_step": recipe.batch_size,
        "grad_accum": micro, "checkpointing": recipe.checkpointing, "liger": setting.liger,
        "frozen_dtype": str(setting.frozen_dtype).removeprefix("torch."), "lora_r": recipe.lora_r,
        "cutoff": recipe.cutoff, "learning_rate": recipe.learning_rate, "warmup_steps": warmup, "timed_steps": timed,
        "tokens_per_step": statistics.mean(timed_tokens), "max_tokens": max(counter.tokens),
        "seconds_per_step": statistics.median(clock.seconds[warmup:]) / micro,
        "real_tokens_per_s": sum(timed_tokens) / seconds, "first_step_s": clock.seconds[0],
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if CUDA else None,
    }
    trainer.model.save_pretrained(scratch / "adapter")
    run["model_object"] = trainer.model.unload()
    del trainer
    return run


def settings_for(model_id: str, smoke: bool) -> list[Setting]:
    """What to run on one model, in order of importance (the budget may end the list early)."""
    profile = get_profile("tiny" if smoke else "gpu", model=model_id)
    seed, fast = profile.recipe("huanhuan"), profile.faster_recipe("huanhuan")
    lengths = shipped_lengths("huanhuan")
    new, faster = plan_batch(model_id, "huanhuan", seed, lengths), plan_batch(model_id, "huanhuan", fast, lengths)
    liger = CUDA and importlib.util.find_spec("liger_kernel") is not None
    attention, compute = fastest_attention(), torch.bfloat16 if CUDA else torch.float32
    old = replace(GPU_RECIPES["huanhuan"], checkpointing=True)  # 4 rows x 4 accumulation, as shipped
    if smoke:  # CPU, in make test: every label and code path of the real check, on short rows and small batches
        new, faster = replace(new, batch_size=2, cutoff=64), replace(faster, batch_size=4, cutoff=64)
        old = replace(seed, batch_size=1, grad_accum=2, cutoff=64)
    plan = [Setting("old default", "huanhuan", old, PACKED_SDPA, False, torch.float32),
            Setting("new default", "huanhuan", new, attention, liger, compute),
            Setting("faster", "huanhuan", faster, attention, liger, compute)]
    if liger:
        plan.append(Setting("faster, no Liger", "huanhuan", faster, attention, False, compute))
    plan.append(Setting("faster, checkpointing " + ("off" if faster.checkpointing else "on"), "huanhuan",
                        replace(faster, checkpointing=not faster.checkpointing), attention, liger, compute))
    for rows in (1, 2) if smoke else SCAN_ROWS:
        scan = replace(seed, batch_size=rows, grad_accum=1, checkpointing=True, cutoff=64 if smoke else seed.cutoff)
        plan.append(Setting(f"scan {rows}", "huanhuan", scan, "sdpa", False, compute))
    if CUDA:  # a variable-length route that skips the masked-out blocks: adopted only if this measures it faster
        plan.append(Setting("faster, flex_attention", "huanhuan", faster, "flex_attention", liger, compute))
    if model_id == SEVEN_B:
        nekoqa = plan_batch(model_id, "nekoqa", profile.recipe("nekoqa"), shipped_lengths("nekoqa"))
        plan.append(Setting("new default", "nekoqa", nekoqa, attention, liger, compute))
    return plan


def check_model(model_id: str, smoke: bool, deadline: float, scratch: Path, report: dict, out: Path) -> None:
    """Every setting of one model, each written to ``out`` when done; then the merge, on the largest model."""
    from helpers.train import load_model_4bit  # after materialize: the course's own NF4 load

    profile = get_profile("tiny" if smoke else "gpu", model=model_id)
    folder = scratch / model_id.replace("/", "--")
    started = time.perf_counter()
    shape = materialize(model_id, folder, torch.bfloat16 if CUDA else torch.float32, SMOKE_LAYERS if smoke else None)
    model = load_model_4bit(folder, profile, attn_implementation="sdpa")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    entry = {"model": model_id, "parameters": shape.parameters(), "setup_s": time.perf_counter() - started,
             "weights_mib": {}, "skipped": []}
    for dtype in (torch.float32, torch.bfloat16):  # the frozen weights as the course kept them before, and now
        set_frozen_dtype(model, dtype)
        entry["weights_mib"][str(dtype).removeprefix("torch.")] = model.get_memory_footprint() / 2**20
    report["models"].append(entry)
    warmup, timed = (1, 1) if smoke else (WARMUP, TIMED)
    for setting in settings_for(model_id, smoke):
        if time.perf_counter() > deadline:
            entry["skipped"].append(f"{setting.lesson}/{setting.label}")
            continue
        try:
            run = train_steps(model, tokenizer, shape, setting, warmup, timed, scratch)
            model = run.pop("model_object")
            run["model"] = model_id
            run["estimated_mib"] = estimated_mib(run)
            print(line(run), flush=True)
        except Exception as error:  # an out-of-memory at one setting: recorded, the next setting runs
            run = {"source": "gpu_check.py", "label": setting.label, "model": model_id, "lesson": setting.lesson,
                   "rows_per_step": setting.recipe.batch_size, "error": repr(error)[:400]}
            print(f"{model_id} {setting.lesson} {setting.label}: {run['error']}", flush=True)
            del model  # it may carry this run's LoRA layers: load it afresh
            gc.collect()
            if CUDA:
                torch.cuda.empty_cache()
            model = load_model_4bit(folder, profile, attn_implementation="sdpa")
        report["runs"].append(run)
        write(report, out)
        gc.collect()
        if CUDA:
            torch.cuda.empty_cache()
    if model_id == SEVEN_B or smoke:
        if time.perf_counter() < deadline and (scratch / "adapter").is_dir():
            del model
            gc.collect()
            tokenizer.save_pretrained(scratch / "adapter")
            started = time.perf_counter()
            dtype = torch.bfloat16 if CUDA else torch.float32
            merge_adapter(folder, scratch / "adapter", scratch / "merged", dtype, profile.max_shard_size)
            entry["merge"] = {"seconds": time.perf_counter() - started, "dtype": str(dtype),
                              "shards": len(list((scratch / "merged").glob("*.safetensors")))}
        else:
            entry["skipped"].append("merge")
    write(report, out)


def line(run: dict) -> str:
    peak = "-" if run["peak_mib"] is None else f"{run['peak_mib'] / 1024:.2f} GiB"
    return (f"{run['model'].rsplit('/', 1)[-1]} {run['lesson']} {run['label']}: {run['rows_per_step']}x"
            f"{run['grad_accum']} {run['attention']}, {run['real_tokens_per_s']:.0f} real tok/s, "
            f"{run['seconds_per_step']:.2f} s/micro-step, peak {peak} (estimate {run['estimated_mib'] / 1024:.2f})")


def write(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def fixed_cost(runs: list[dict]) -> float | None:
    """The intercept of seconds per micro-step against tokens per micro-step over one model's scan runs."""
    points = [(run["tokens_per_step"], run["seconds_per_step"]) for run in runs if run["label"].startswith("scan")]
    return straight_line(points)[0] if len(points) >= 2 else None


def summary(report: dict) -> str:
    """Per model: the speedup of the new default and the faster recipe over the old default, and the fixed cost."""
    lines = []
    for entry in report["models"]:
        runs = [run for run in report["runs"] if run["model"] == entry["model"] and "error" not in run]
        by_label = {run["label"]: run for run in runs if run["lesson"] == "huanhuan"}
        old = by_label.get("old default")
        for label in ("new default", "faster"):
            if old and label in by_label:
                ratio = by_label[label]["real_tokens_per_s"] / old["real_tokens_per_s"]
                lines.append(f"{entry['model']}: {label} {by_label[label]['real_tokens_per_s']:.0f} real tok/s = "
                             f"{ratio:.1f}x old default ({old['real_tokens_per_s']:.0f})")
        if (fixed := fixed_cost(runs)) is not None:
            lines.append(f"{entry['model']}: fixed cost per micro-step {fixed:.2f} s (scan intercept)")
        weights = ", ".join(f"{name} {mib / 1024:.2f} GiB" for name, mib in entry["weights_mib"].items())
        lines.append(f"{entry['model']}: weights with frozen {weights}")
        errors = [run for run in runs if run.get("peak_mib")]
        if errors:
            worst = [run["estimated_mib"] / run["peak_mib"] - 1 for run in errors]
            lines.append(f"{entry['model']}: estimate vs peak {min(worst):+.0%} .. {max(worst):+.0%}")
        if entry["skipped"]:
            lines.append(f"{entry['model']}: skipped for time: {', '.join(entry['skipped'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU: SmolLM2, a few layers, short runs")
    parser.add_argument("--budget-s", type=float, default=420,
                        help="no new run (nor the merge, ~20 s for 7B) starts after this many seconds")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/gpu-<device>.json)")
    args = parser.parse_args(argv)
    if not args.smoke and not CUDA:
        parser.error("没有 CUDA GPU：在 CPU 上请加 --smoke / no CUDA GPU here: use --smoke on CPU")
    device = torch.cuda.get_device_name() if CUDA else "cpu"
    slug = "smoke-cpu" if args.smoke else device.lower().replace(" ", "-")
    out = args.out or RESULTS / f"gpu-{slug}.json"
    report = {"device": device, "torch": torch.__version__, "smoke": args.smoke,
              "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if CUDA else None,
              "measured": time.strftime("%Y-%m-%d"), "models": [], "runs": []}
    deadline = time.perf_counter() + args.budget_s
    with tempfile.TemporaryDirectory() as scratch:
        for model_id in [SMOLLM2] if args.smoke else [GPU_MODEL_ID, SEVEN_B]:
            check_model(model_id, args.smoke, deadline, Path(scratch), report, out)
    print(summary(report))
    print(f"结果已写入 / results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

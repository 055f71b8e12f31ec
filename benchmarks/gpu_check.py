"""The prepared GPU check of the course's gpu path: memory and speed of its QLoRA steps on real model shapes (issue 13).

    python benchmarks/gpu_check.py             # on a CUDA GPU: both models, every SFT lesson (~6 min on one H200)
    python benchmarks/gpu_check.py --smoke     # on CPU: SmolLM2's shape, one lesson, one step (tests/test_gpu_check.py)

Only memory and speed are measured, so the weights are random: each model is built from the config.json committed in
``benchmarks/model_configs/`` (a machine lent for this reaches no hub), saved, and loaded back through the course's
own ``load_model_4bit`` (NF4, double quantization, bf16 compute). For the default gpu model and a 7B model, and for
each SFT lesson's gpu recipe with that model's 24 GB micro-batch (``helpers.models``), a few optimizer steps run
through ``benchmarks/pipeline.py``'s ``run_pipeline`` (the course's ``sft_config`` / ``make_trainer``: paged 8-bit
AdamW, gradient checkpointing) on rows whose lengths follow the course data (``helpers.cost.row_lengths``), with:

- ``padding_free`` (the course's default) under each attention available: ``packed_sdpa`` (the course's),
  ``sdpa`` (PyTorch, one masked square per packed row) and ``flash_attention_2`` when ``flash_attn`` is installed;
- ``fixed`` padding to the cutoff under ``sdpa``, the original tutorials' way.

Each run reports real (non-pad) tokens/s, ``torch.cuda.max_memory_allocated`` and the estimator's figure for the
same batch (without the CUDA context, which the allocator does not count). Last, the 7B run's adapter is merged into
a bf16 base with ``helpers.merge.merge_adapter``. Results: ``benchmarks/results/gpu-<device>.json`` and a table.
Runs still waiting when ``--budget-s`` is spent are listed as skipped, so the JSON is always written.

The GPU machine has no bitsandbytes, trl or datasets: fetch their wheels here once (``bash benchmarks/gpu_wheels.sh``
writes ``.whl/``), carry ``.whl`` along, and start the command there with
``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for helpers and benchmarks

from benchmarks.pipeline import measure_pipeline  # noqa: E402
from helpers.attention import PACKED_SDPA, fastest_attention  # noqa: E402
from helpers.cost import lesson_settings, row_lengths  # noqa: E402
from helpers.memory import GIB, ModelShape, estimate  # noqa: E402
from helpers.merge import merge_adapter  # noqa: E402
from helpers.profiles import GPU_MODEL_ID, get_profile  # noqa: E402
from helpers.templates import IGNORE_INDEX  # noqa: E402

CONFIGS = Path(__file__).parent / "model_configs"
RESULTS = Path(__file__).parent / "results"
SEVEN_B = "Qwen/Qwen2.5-7B-Instruct"
LESSONS = ("nekoqa", "tang", "huanhuan")
STEPS = 3  # optimizer steps per run: the first one warms the kernels up, the peak shows in any of them
# A template of the right shape: the check never decodes text, but the course refuses a tokenizer without one.
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>{% endfor %}"


def attention_choices() -> list[str]:
    """The attention implementations to compare for padding-free batches: sdpa, the course's, and the fastest."""
    choices = [PACKED_SDPA, "sdpa"]
    fastest = fastest_attention()  # flash_attention_2 on a CUDA GPU with flash_attn installed
    return choices if fastest in choices else [*choices, fastest]


def materialize(model_id: str, folder: Path, dtype: torch.dtype) -> ModelShape:
    """A random-weight model of ``model_id``'s committed config, saved with a stand-in tokenizer into ``folder``."""
    config_dir = CONFIGS / model_id.replace("/", "--")
    config = AutoConfig.from_pretrained(config_dir)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    del model
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                        pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return ModelShape.from_config(config_dir)


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


def estimated_bytes(shape: ModelShape, lesson: str, recipe, rows: list[dict], pipeline: str) -> int:
    """The estimator's peak for the largest batch of these rows, without the CUDA context the allocator skips."""
    batches = [rows[start : start + recipe.batch_size] for start in range(0, len(rows), recipe.batch_size)]
    if pipeline == "fixed":
        length = recipe.cutoff
    else:  # padding-free: the tokens of the fullest packed batch, spread over the batch's rows
        length = -(-max(sum(len(row["input_ids"]) for row in batch) for batch in batches) // recipe.batch_size)
    settings = replace(lesson_settings(lesson, recipe, gpu=torch.cuda.is_available()), length=length)
    parts = estimate(shape, settings)
    return parts.total - parts.overhead


def check_model(model_id: str, lessons: tuple[str, ...], steps: int, deadline: float, scratch: Path,
                merge: bool) -> dict:
    """Every lesson x pipeline x attention run of one model, and optionally the merge of its last adapter."""
    profile = get_profile("gpu" if torch.cuda.is_available() else "tiny", model=model_id)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    folder = scratch / model_id.replace("/", "--")
    started = time.perf_counter()
    shape = materialize(model_id, folder, dtype)
    from helpers.train import load_model_4bit  # after materialize: the course's own NF4 load

    model = load_model_4bit(folder, profile, attn_implementation="sdpa")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    report = {"model": model_id, "parameters": shape.parameters(), "setup_s": time.perf_counter() - started,
              "weights_mib": model.get_memory_footprint() / 2**20, "runs": [], "skipped": []}
    plan = [(lesson, "padding_free", attention) for lesson in lessons for attention in attention_choices()]
    plan += [(lesson, "fixed", "sdpa") for lesson in lessons]
    for lesson, pipeline, attention in plan:
        if time.perf_counter() > deadline:
            report["skipped"].append(f"{lesson}/{pipeline}/{attention}")
            continue
        recipe = replace(profile.recipe(lesson), max_steps=steps, grad_accum=1, warmup_steps=0)
        rows = lesson_rows(lesson, steps * recipe.batch_size, recipe.cutoff, shape.vocab_size)
        model.set_attn_implementation(attention)
        result, trainer = measure_pipeline(model, tokenizer, rows, recipe, profile, pipeline)
        estimated = estimated_bytes(shape, lesson, recipe, rows, pipeline)
        measured = result["peak_memory_mib"] * 2**20  # on CPU the process's peak RSS: not comparable, no error
        result.update(lesson=lesson, attention=attention, batch_size=recipe.batch_size, cutoff=recipe.cutoff,
                      estimated_mib=estimated / 2**20,
                      estimate_error=estimated / measured - 1 if torch.cuda.is_available() else None)
        report["runs"].append(result)
        print(f"{model_id} {lesson} {pipeline}/{attention}: {result['real_tokens_per_s']:.0f} real tok/s, "
              f"peak {result['peak_memory_mib'] / 1024:.2f} GiB (estimate {estimated / GIB:.2f})", flush=True)
        trainer.model.save_pretrained(scratch / "adapter")
        model = trainer.model.unload()  # the base without this run's LoRA layers, for the next run
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if merge and report["runs"] and time.perf_counter() < deadline:
        del model
        gc.collect()
        tokenizer.save_pretrained(scratch / "adapter")
        started = time.perf_counter()
        merge_adapter(folder, scratch / "adapter", scratch / "merged", dtype, profile.max_shard_size)
        report["merge"] = {"seconds": time.perf_counter() - started, "dtype": str(dtype),
                           "shards": len(list((scratch / "merged").glob("*.safetensors")))}
    return report


def error(share: float | None) -> str:
    return "-" if share is None else f"{share:+.0%}"


def table(report: dict) -> str:
    """One line per run: model, lesson, pipeline, attention, tokens/s, peak and the estimator's error."""
    lines = [f"{'model':<28}{'lesson':<10}{'pipeline':<14}{'attention':<19}{'batch':>6}{'real tok/s':>11}"
             f"{'peak GiB':>9}{'est. err':>9}"]
    for model in report["models"]:
        for run in model["runs"]:
            lines.append(f"{model['model'].rsplit('/', 1)[-1]:<28}{run['lesson']:<10}{run['pipeline']:<14}"
                         f"{run['attention']:<19}{run['batch_size']:>6}{run['real_tokens_per_s']:>11.0f}"
                         f"{run['peak_memory_mib'] / 1024:>9.2f}{error(run['estimate_error']):>9}")
        if "merge" in model:
            lines.append(f"{model['model']}: merge into {model['merge']['dtype']} {model['merge']['seconds']:.0f} s")
        if model["skipped"]:
            lines.append(f"{model['model']}: skipped for time: {', '.join(model['skipped'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU: SmolLM2's shape, one lesson, one step")
    parser.add_argument("--budget-s", type=float, default=360,
                        help="no new run (nor the merge, ~2 min for 7B) starts after this many seconds")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/gpu-<device>.json)")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("没有 CUDA GPU：在 CPU 上请加 --smoke / no CUDA GPU here: use --smoke on CPU")
    models = ["HuggingFaceTB/SmolLM2-135M-Instruct"] if args.smoke else [GPU_MODEL_ID, SEVEN_B]
    lessons, steps = (("tang",), 1) if args.smoke else (LESSONS, STEPS)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report = {"device": device, "torch": torch.__version__, "smoke": args.smoke, "models": []}
    deadline = time.perf_counter() + args.budget_s
    with tempfile.TemporaryDirectory() as scratch:
        for model_id in models:
            merge = model_id == models[-1]  # the largest model's adapter: the 7B merge
            report["models"].append(check_model(model_id, lessons, steps, deadline, Path(scratch), merge))
    slug = "smoke-cpu" if args.smoke else device.lower().replace(" ", "-")
    out = args.out or RESULTS / f"gpu-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(table(report))
    print(f"结果已写入 / results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Notebook 03's training cells, pasted into a fresh ``.py`` file, train and save an adapter without the course.

The cells marked ``# @save`` are the course's only copy of the training path (``helpers.notebook_code``). A student
copies them into a script of their own: this test does exactly that, with the two blocks that §6 of the notebook
gives for a script (paths and recipe replaced by tiny values), and runs it in a new Python process that never
imports ``helpers``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import nbformat
import pytest

from helpers.data import load_conversations, read_records
from helpers.encoding import encode_conversations
from helpers.notebook_code import NOTEBOOK, SAVE_MARK
from helpers.paths import DATA_DIR

# The script in the notebook's order: its preamble, the encoding cell, its encoding lines, the training cells.
BEFORE_ROWS = ("encode", "quantization", "lora", "sft_config")
AFTER_ROWS = ("load_4bit", "adapter_dtype", "trainer", "resume", "train", "save")
TINY_RECIPE = ("types.SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-3, max_steps=2, "
               "batch_size=2, grad_accum=1, warmup_steps=0, save_steps=1, cutoff=48, checkpointing=True)")
EPILOGUE = """
import sys
print("IMPORTED_HELPERS", any(name == "helpers" or name.startswith("helpers.") for name in sys.modules))
print("ATTENTION", model.config._attn_implementation)
print("STEPS", trainer.state.global_step)
print("ROWS", json.dumps(train_rows))
"""


def notebook() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def saved(*names: str) -> list[str]:
    cells = {mark[1]: cell.source for cell in notebook().cells
             if cell.cell_type == "code" and (mark := SAVE_MARK.match(cell.source))}
    return [cells[name] for name in names]


def script_blocks() -> tuple[str, str]:
    """The notebook's two ```python blocks for a script: the preamble and the lines that encode the rows."""
    text = next(cell.source for cell in notebook().cells
                if cell.cell_type == "markdown" and "train_rows = [encode(" in cell.source)
    preamble, rows = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return preamble, rows


def with_values(preamble: str, values: dict[str, str]) -> str:
    """The preamble with each ``name = ...`` statement (through its closing bracket) replaced by ``name = value``."""
    for name, value in values.items():
        pattern = re.compile(rf"^{name} = .*?(?=^\S)", flags=re.S | re.M)
        assert pattern.search(preamble), f"the notebook's script preamble no longer sets {name}"
        preamble = pattern.sub(f"{name} = {value}\n", preamble, count=1)
    return preamble


# Prevents: a lesson whose training code only runs inside the course (an unregistered attention name, a helper
# import, a variable an earlier cell defined), so the student's own copy crashes or encodes differently.
@pytest.mark.slow
def test_pasted_training_cells_train_and_save_an_adapter(tiny_tokenizer, shallow_model, tmp_path):
    train_file, eval_file = tmp_path / "train.json", tmp_path / "eval.json"
    train_file.write_text(json.dumps(read_records(DATA_DIR / "nekoqa" / "train.json")[:4], ensure_ascii=False))
    eval_file.write_text(json.dumps(read_records(DATA_DIR / "nekoqa" / "eval.json")[:2], ensure_ascii=False))
    assert not any("helpers" in source for source in saved(*BEFORE_ROWS, *AFTER_ROWS))
    preamble, rows = script_blocks()
    preamble = with_values(preamble, {
        "model_dir": repr(str(shallow_model)), "train_file": repr(str(train_file)),
        "eval_file": repr(str(eval_file)), "output_dir": repr(str(tmp_path / "checkpoints")),
        "adapter_path": repr(str(tmp_path / "adapter")), "recipe": TINY_RECIPE})
    script = tmp_path / "my_qlora.py"
    script.write_text("\n\n".join([preamble, *saved(*BEFORE_ROWS), rows, *saved(*AFTER_ROWS), EPILOGUE]),
                      encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                               "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IMPORTED_HELPERS False" in done.stdout and "ATTENTION sdpa" in done.stdout and "STEPS 2" in done.stdout
    pasted_rows = json.loads(done.stdout.split("ROWS ", 1)[1])
    assert pasted_rows == encode_conversations(tiny_tokenizer, load_conversations(train_file), 48)
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / ".course-complete").is_file()
    assert list((tmp_path / "checkpoints").glob("checkpoint-*"))  # resumable checkpoints were written

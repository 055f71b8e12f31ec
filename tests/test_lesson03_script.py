"""Notebook 03's training cells, pasted into a fresh ``.py`` file, train and save an adapter without the course.

The cells marked ``# @save`` are the course's only copy of the training path (``helpers.notebook_code``). A student
copies them into a script of their own: this test does exactly that, with a short preamble in place of the
notebook's earlier cells, and runs it in a new Python process that never imports ``helpers``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat

from helpers.data import encode_conversations
from helpers.hub_data import course_conversations
from helpers.notebook_code import NOTEBOOK, SAVE_MARK
from helpers.tiny_model import ensure_tiny_model

# The training path in the notebook's order; each name is a "# @save <name>" cell.
TRAINING_CELLS = ("quantization", "lora", "sft_config", "load_4bit", "trainer", "resume", "train", "save")
PREAMBLE = """
import json, types
import torch
from transformers import AutoTokenizer

model_dir = {model_dir!r}
tokenizer = AutoTokenizer.from_pretrained(model_dir)
train_rows = json.loads({train_rows!r})
eval_rows = json.loads({eval_rows!r})
recipe = types.SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-3, max_steps=2,
                               batch_size=2, grad_accum=1, warmup_steps=0, save_steps=1, checkpointing=True)
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
dtype = torch.float32
output_dir = {output_dir!r}
adapter_path = {adapter_path!r}
seed, eval_steps = 0, 2
attention = "packed_sdpa"  # the course's own attention, not registered outside the course: the cell falls back
device_map = "cpu"
callbacks = []
"""
EPILOGUE = """
import sys
print("IMPORTED_HELPERS", any(name == "helpers" or name.startswith("helpers.") for name in sys.modules))
print("ATTENTION", model.config._attn_implementation)
print("STEPS", trainer.state.global_step)
"""


def training_cells() -> list[str]:
    cells = {mark[1]: cell.source for cell in nbformat.read(NOTEBOOK, as_version=4).cells
             if cell.cell_type == "code" and (mark := SAVE_MARK.match(cell.source))}
    return [cells[name] for name in TRAINING_CELLS]


# Prevents: a lesson whose training code only runs inside the course (an unregistered attention name, a helper
# import), so the student's own copy crashes.
def test_pasted_training_cells_train_and_save_an_adapter(tiny_tokenizer, tmp_path):
    rows = encode_conversations(tiny_tokenizer, course_conversations("nekoqa", "train", 4), 48)
    held_out = encode_conversations(tiny_tokenizer, course_conversations("nekoqa", "eval", 2), 48)
    assert not any("helpers" in source for source in training_cells())
    script = tmp_path / "my_qlora.py"
    preamble = PREAMBLE.format(model_dir=str(ensure_tiny_model()), train_rows=json.dumps(rows),
                               eval_rows=json.dumps(held_out), output_dir=str(tmp_path / "checkpoints"),
                               adapter_path=str(tmp_path / "adapter"))
    script.write_text("\n\n".join([preamble, *training_cells(), EPILOGUE]), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                               "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "IMPORTED_HELPERS False" in done.stdout and "ATTENTION sdpa" in done.stdout and "STEPS 2" in done.stdout
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
    assert set(adapter["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                              "down_proj"}
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / ".course-complete").is_file()
    assert list((tmp_path / "checkpoints").glob("checkpoint-*"))  # resumable checkpoints were written

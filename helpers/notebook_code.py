"""The training path's code lives in notebook 03; the helpers run those cells (d2l's ``#@save``, one copy).

Lesson 03 shows the QLoRA path as plain library calls a student can paste into a script: 4-bit load, k-bit
preparation, ``LoraConfig``, ``SFTConfig``, ``SFTTrainer``, training that resumes, saving. Its cells that start with
``# @save <name>`` are the only copy of that code: ``helpers.train`` and ``helpers.lessons`` run them with
``run_saved(name, namespace)``, so lessons 04-09, ``scripts/train.py``, the tests and the benchmarks train exactly
as lesson 03 teaches, and a change to the lesson is a change to all of them.
"""

from __future__ import annotations

import json
import linecache
import re
from functools import cache
from types import CodeType

from helpers.paths import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "03_qlora_nekoqa.ipynb"
SAVE_MARK = re.compile(r"# @save (\w+)")


@cache
def saved_cells() -> dict[str, CodeType]:
    """Notebook 03's ``# @save <name>`` cells, compiled; tracebacks show the cell's own lines."""
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    saved = {}
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and (mark := SAVE_MARK.match(source)):
            filename = f"<{NOTEBOOK.name} # @save {mark[1]}>"
            linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
            saved[mark[1]] = compile(source, filename, "exec")
    return saved


def run_saved(name: str, namespace: dict) -> dict:
    """Run notebook 03's cell ``name`` with ``namespace`` as its variables, as the notebook would; return them."""
    exec(saved_cells()[name], namespace)  # noqa: S102 (the course's own notebook, not user input)
    return namespace

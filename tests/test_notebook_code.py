"""Lesson 03's ``# @save`` cells and the module generated from them (``make generate``)."""

from __future__ import annotations

import inspect

import nbformat
import pytest

from helpers import lesson03_cells
from helpers.notebook_code import GENERATED, SavedCellError, generate, main


def notebook_with(tmp_path, *sources: str):
    """A notebook of these code cells in ``tmp_path``."""
    path = tmp_path / "lesson.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources]), path)
    return path


# Prevents: an edit to a "# @save" cell that is not regenerated: lesson 03 would teach one thing and lessons 04-09,
# scripts/train.py and the tests would run another.
def test_the_committed_module_is_what_the_notebook_generates(capsys):
    assert GENERATED.read_text(encoding="utf-8") == generate(), "run `make generate`"
    assert main(["--check"]) == 0


# Prevents: a cell's contract (the names it needs, the names it returns) drifting from its callers.
def test_a_statement_cell_is_a_function_of_its_free_names_returning_what_it_assigns(tmp_path, monkeypatch):
    monkeypatch.setattr("helpers.notebook_code.REPO_ROOT", tmp_path)
    path = notebook_with(tmp_path,
                         "# @save helper\nimport math\nSCALE = 2\n\n\ndef double(x):\n    return SCALE * x",
                         "# @save step\nimport json\ntotal = double(rate) + sum(v for v in values)\n"
                         "for item in values:\n    total += item\ntext = json.dumps(total)",
                         "print('not saved')")
    namespace: dict = {}
    exec(generate(path), namespace)  # noqa: S102 (text generated from the test's own cells)
    assert list(inspect.signature(namespace["step"]).parameters) == ["rate", "values"]  # not v, item, json, double
    assert namespace["step"](rate=1.5, values=[1, 2]) == (9.0, "9.0")
    assert "print" not in generate(path)


@pytest.mark.parametrize(("sources", "message"), [
    (["# a comment first\n# @save lora\nx = 1"], "must be the cell's first line"),
    (["# @save lora\nx = 1", "# @save lora\ny = 2"], "a second cell named 'lora'"),
])
def test_a_misplaced_or_repeated_marker_is_an_error_not_a_dropped_cell(tmp_path, sources, message):
    with pytest.raises(SavedCellError, match=message):
        generate(notebook_with(tmp_path, *sources))


def test_the_generated_training_steps_take_the_names_lesson_03_defines():
    expected = {
        "quantization": ["dtype"],
        "lora": ["recipe", "target_modules"],
        "load_4bit": ["model_dir", "bnb_config", "dtype", "attention", "device_map"],
        "trainer": ["model", "args", "train_rows", "eval_rows", "tokenizer", "lora", "callbacks"],
        "train": ["args", "trainer"],
        "save": ["adapter_path", "trainer", "tokenizer"],
    }
    for name, parameters in expected.items():
        assert sorted(inspect.signature(getattr(lesson03_cells, name)).parameters) == sorted(parameters), name

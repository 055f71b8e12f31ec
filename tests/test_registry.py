"""The lesson registry (``helpers.registry``) is the one place a lesson is described; everything else agrees with it."""

from __future__ import annotations

import ast
import re

import nbformat

from helpers.evaluate import TASK_CHECKS
from helpers.hub_data import FULL_DATASETS
from helpers.paths import DATA_DIR, REPO_ROOT
from helpers.profiles import PROFILES
from helpers.registry import ADAPTERS_USED, LESSONS, SFT_LESSONS

NOTEBOOKS = REPO_ROOT / "notebooks"
# Calls that load (or first train) another lesson's adapter or model: the lesson is their first argument.
USES_ADAPTER = re.compile(r"\b(?:train_lesson|require_adapter|merge_lesson|load_merged|load_tuned|evaluate_lesson|"
                          r"load_policy)\(\s*[\"'](\w+)[\"']")


def code(notebook) -> str:
    return "\n".join(cell.source for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "code")


# Prevents: a lesson added to the registry without a recipe in each profile, data, a notebook or a task check.
def test_every_lesson_has_its_recipes_files_notebook_and_check():
    for profile in PROFILES.values():
        assert set(profile.recipes) == set(LESSONS), profile.name
        assert set(profile.faster_rows or {}) == set(SFT_LESSONS), profile.name
    assert set(FULL_DATASETS) == set(SFT_LESSONS)
    for lesson in LESSONS.values():
        assert (NOTEBOOKS / lesson.notebook).is_file(), lesson.notebook
        assert f'"{lesson.name}"' in code(NOTEBOOKS / lesson.notebook), f"{lesson.notebook} never names {lesson.name}"
        assert lesson.is_sft != bool(lesson.builds_on), lesson.name
        if lesson.is_sft:
            assert (DATA_DIR / lesson.train_file).is_file() and (DATA_DIR / lesson.eval_file).is_file()
        else:
            assert LESSONS[lesson.builds_on].is_sft
        assert not lesson.task_check or lesson.task_check in TASK_CHECKS


# Prevents: a notebook that loads lesson 03's adapter being run by nbval before lesson 03 has written it.
def test_every_notebook_that_loads_an_adapter_says_so():
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        used = set(USES_ADAPTER.findall(code(notebook))) - {lesson.name for lesson in LESSONS.values()
                                                            if lesson.notebook == notebook.name}
        used |= {LESSONS[name].builds_on for name in used if LESSONS[name].builds_on}
        assert used <= set(ADAPTERS_USED.get(notebook.name[:2], ())), notebook.name


def literal_lesson_lists(path) -> list[int]:
    """Lines of ``path`` with a literal tuple, list or set of strings that holds every SFT lesson's name."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Tuple | ast.List | ast.Set) and all(
                isinstance(item, ast.Constant) and isinstance(item.value, str) for item in node.elts):
            if set(SFT_LESSONS) <= {item.value for item in node.elts}:
                lines.append(node.lineno)
    return lines


# Prevents: a second list of the lessons that a new lesson would not be added to.
def test_no_other_module_lists_the_lessons():
    for path in [*REPO_ROOT.glob("helpers/*.py"), *REPO_ROOT.glob("scripts/*.py"), *REPO_ROOT.glob("benchmarks/*.py"),
                 *REPO_ROOT.glob("tests/*.py")]:
        assert path.name == "registry.py" or not literal_lesson_lists(path), f"{path.name}: use helpers.registry"

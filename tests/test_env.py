import subprocess
import sys

import pytest

from helpers.env import OK, PROBLEM, check_library, format_report, pinned_versions, run_checks


@pytest.mark.slow
def test_env_module_prints_report_and_exits_zero_here():
    result = subprocess.run([sys.executable, "-m", "helpers.env"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for item in ("course profile", "transformers", "GPU", "disk: system", "reach https://www.modelscope.cn"):
        assert item in result.stdout


def test_every_check_has_a_verdict_and_problems_have_advice():
    checks = run_checks()
    assert {c.verdict for c in checks} <= {"ok", "warning", "problem"}
    assert all(c.advice for c in checks if c.verdict != OK)


def test_missing_library_is_a_problem_with_a_fix():
    check = check_library("no-such-package-for-the-course", "1.0")
    assert check.verdict == PROBLEM and "make setup" in check.advice
    assert "make setup" in format_report([check])


def test_pins_come_from_requirements():
    pins = pinned_versions()
    assert pins["transformers"].startswith("5.") and pins["trl"].startswith("1.")


# Prevents: the README's old clone target being the model cache: a re-clone (rm -rf, git clone) deleting gigabytes.
def test_a_cache_inside_the_checkout_is_a_warning_that_says_what_to_do(tmp_path):
    from helpers.env import WARNING, check_cache_location

    repo = tmp_path / "llm-course"
    for cache in (repo, repo / "models-cache"):
        check = check_cache_location(cache, repo)
        assert check.verdict == WARNING and "COURSE_CACHE" in check.advice and "re-cloning" in check.advice
    assert check_cache_location(tmp_path / "llm-course-cache", repo).verdict == OK


# Prevents: lesson 00 on AutoDL's default kernel stopping at "No module named 'helpers'" with no word on the fix.
def test_lesson_00_first_cell_names_the_kernel_to_pick_when_helpers_is_missing(tmp_path):
    import json
    import os

    from helpers.paths import REPO_ROOT

    cells = json.loads((REPO_ROOT / "notebooks" / "00_environment_check.ipynb").read_text(encoding="utf-8"))["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    first = "".join(code[0]["source"])  # the check must run before any cell imports the course's code
    assert "import helpers" in first and "from helpers" not in first
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # -S: no site-packages, as in a kernel whose Python never ran make setup
    wrong = subprocess.run([sys.executable, "-S", "-c", first], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert wrong.returncode != 0
    assert "内核用错了" in wrong.stderr and "Wrong kernel" in wrong.stderr and "Python (llm-course)" in wrong.stderr
    assert "Change Kernel" in wrong.stderr and "No module named 'helpers'" not in wrong.stderr
    right = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert right.returncode == 0, right.stderr

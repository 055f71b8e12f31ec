"""A file of ``scripts/`` as a module, without running it: tests call its functions in their own process."""

import importlib.util
from types import ModuleType

from helpers.paths import REPO_ROOT


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module named ``name`` (its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

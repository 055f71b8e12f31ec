"""nbval on several workers (``pytest -n 2 --dist loadgroup``): which notebooks must share one worker, in order.

Each notebook's cells stay on one worker, in order. Lesson 03 trains the NekoQA adapter in its own cells (it
teaches the code), so the lessons that use that adapter run after it on the same worker; the other adapters
are trained through ``train_lesson``, whose file lock makes a notebook on the other worker wait for them.
"""

import pytest

NEKOQA_CHAIN = ("03", "06", "07", "08", "09", "11")  # lesson 03, then the lessons that load its adapter


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.suffix != ".ipynb":
            continue
        number = item.path.name[:2]
        group = "nekoqa-chain" if number in NEKOQA_CHAIN else item.path.stem
        item.add_marker(pytest.mark.xdist_group(group))

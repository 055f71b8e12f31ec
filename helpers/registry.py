"""The course's lessons in one table: what each one is, for every caller.

A training lesson is named by its data set (``nekoqa``, ``tang``, ``huanhuan``) or, for preference tuning, by what
it tunes (``nekoqa_dpo``); the name keys its recipes (``helpers.profiles``), adapters and outputs. ``LESSONS`` says
which notebook teaches it, its shipped data files and system prompt, the adapter it builds on and lesson 07's task
check. ``ADAPTERS_USED`` says which notebooks load which lessons' adapters, so ``scripts/test_notebooks.py`` runs
them after those lessons. ``tests/test_registry.py`` fails when a lesson is added in one place only.
"""

from __future__ import annotations

from dataclasses import dataclass

from helpers.paths import DATA_DIR

HUANHUAN_SYSTEM = (DATA_DIR / "huanhuan" / "system_prompt.txt").read_text(encoding="utf-8").strip()
TANG_SYSTEM = "You are a helpful assistant and good at writing Tang poem. 你是一個樂於助人的助手且擅長寫唐詩。"


@dataclass(frozen=True)
class Lesson:
    """One training lesson; an SFT lesson has shipped data files, a preference lesson builds on one."""

    name: str
    notebook: str  # its notebook in notebooks/
    train_file: str = ""  # shipped training rows under data/ ("" for DPO: its pairs are helpers.data's own files)
    eval_file: str = ""  # shipped held-out rows under data/
    system: str | None = None  # the system prompt it trains with (None: none)
    builds_on: str = ""  # the SFT lesson whose adapter it continues (DPO)
    task_check: str = ""  # lesson 07's simple check of its replies (helpers.evaluate.TASK_CHECKS), if any

    @property
    def number(self) -> str:
        """The notebook's number: ``03``."""
        return self.notebook[:2]

    @property
    def is_sft(self) -> bool:
        return bool(self.train_file)


LESSONS: dict[str, Lesson] = {
    lesson.name: lesson
    for lesson in (
        # NekoQA trains without a system prompt, as the original project does.
        Lesson("nekoqa", "03_qlora_nekoqa.ipynb", "nekoqa/train.json", "nekoqa/eval.json", task_check="persona"),
        Lesson("tang", "04_qlora_tang_poetry.ipynb", "tang/Tang_training_data.json", "tang/Tang_eval_data.json",
               TANG_SYSTEM, task_check="verse_form"),
        Lesson("huanhuan", "05_qlora_huanhuan.ipynb", "huanhuan/train.json", "huanhuan/eval.json", HUANHUAN_SYSTEM),
        Lesson("nekoqa_dpo", "09_dpo.ipynb", builds_on="nekoqa"),
    )
}
SFT_LESSONS = tuple(name for name, lesson in LESSONS.items() if lesson.is_sft)

# Notebook number -> the lessons whose adapters it loads (trained first through train_lesson when missing).
ADAPTERS_USED: dict[str, tuple[str, ...]] = {
    "06": ("nekoqa",), "07": SFT_LESSONS, "08": ("nekoqa",), "09": ("nekoqa",), "11": ("nekoqa",),
}


def is_preference(lesson: str) -> bool:
    """Whether ``lesson`` tunes on preference pairs (DPO) rather than on conversations."""
    return bool(LESSONS[lesson].builds_on)

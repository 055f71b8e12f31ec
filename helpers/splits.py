"""Training and held-out rows: the shipped held-out files, or a share of your own rows; a held-out question is
never trained on."""

from __future__ import annotations

import random
from pathlib import Path

from helpers.data import DataError, load_conversations
from helpers.paths import DATA_DIR
from helpers.registry import LESSONS
from helpers.templates import Message


def drop_held_out(train: list[list[Message]], held_out: list[list[Message]]) -> list[list[Message]]:
    """Training conversations whose last question is not a held-out one: else the held-out loss measures recall."""
    questions = {conversation[-2]["content"] for conversation in held_out}
    kept = [conversation for conversation in train if conversation[-2]["content"] not in questions]
    if len(kept) < len(train):
        dropped = len(train) - len(kept)
        print(f"训练集有 {dropped} 条的问题在留出集中，已去掉 / dropped {dropped} training rows held out for eval")
    return kept


DEFAULT_HELD_OUT_SHARE = 0.1  # your own data: the share of rows held out when no held-out file is given


def split_held_out(conversations: list[list[Message]], share: float, seed: int,
                   path: str | Path = "<data>") -> tuple[list[list[Message]], list[list[Message]]]:
    """(train, held-out): ``share`` of the rows (at least 1) held out, picked with ``seed``: the same on every run."""
    count = max(1, round(len(conversations) * share))
    if count >= len(conversations):
        raise DataError(
            f"{path}: 只有 {len(conversations)} 行，留出 {count} 行后没有可训练的数据：请多放一些数据，"
            "或用 --eval 另给一个留出集文件。\n"
            f"{path}: {len(conversations)} rows leave nothing to train on after holding out {count}: "
            "add rows, or give a held-out file with --eval."
        )
    held = set(random.Random(seed).sample(range(len(conversations)), count))
    return ([c for i, c in enumerate(conversations) if i not in held],
            [c for i, c in enumerate(conversations) if i in held])


def own_conversations(path: str | Path, held_out_path: str | Path | None = None,
                      share: float = DEFAULT_HELD_OUT_SHARE, system: str | None = None,
                      seed: int = 42) -> tuple[list[list[Message]], list[list[Message]]]:
    """Your data set as (train, held-out) conversations: the rows of ``held_out_path``, else ``share`` of the rows.

    Any schema ``load_conversations`` reads; training rows whose question is held out are dropped.
    """
    conversations = load_conversations(path, system)
    if held_out_path is None:
        train, held_out = split_held_out(conversations, share, seed, path)
    else:
        train, held_out = conversations, load_conversations(held_out_path, system)
    train = drop_held_out(train, held_out)
    if not train:
        raise DataError(f"{path}: 每一行的问题都在留出集里，没有可训练的数据。\n"
                        f"{path}: every row's question is in the held-out set: nothing is left to train on.")
    return train, held_out


def shipped_conversations(lesson: str, split: str) -> list[list[Message]]:
    """A lesson's rows shipped with the course: ``eval`` the held-out file, ``train`` the training file without the
    held-out questions (no download: ``helpers.hub_data`` swaps in the full set for the gpu profile)."""
    spec = LESSONS[lesson]
    held_out = load_conversations(DATA_DIR / spec.eval_file, spec.system)
    if split == "eval":
        return held_out
    return drop_held_out(load_conversations(DATA_DIR / spec.train_file, spec.system), held_out)

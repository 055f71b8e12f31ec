"""Shared fixtures: the tiny model's tokenizer (loaded once per session), an isolated cache, reachable fake hubs."""

from __future__ import annotations

import pytest
import torch

from helpers import download
from helpers.models import MODEL_ENV
from helpers.paths import CACHE_ENV


@pytest.fixture(autouse=True)
def no_chosen_model(monkeypatch):
    """Each test starts without COURSE_MODEL, whatever the shell running pytest has set."""
    monkeypatch.delenv(MODEL_ENV, raising=False)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Models and data downloads go to this test's own folder."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def reachable(monkeypatch):
    """Every probe succeeds: for tests whose sources are fakes."""
    monkeypatch.setattr(download, "probe", lambda url: None)


@pytest.fixture
def one_thread():
    """One torch thread while training: on 2 shared cores (pytest -n 2) two threads spin and run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from transformers import AutoTokenizer

    from helpers.tiny_model import ensure_tiny_model

    return AutoTokenizer.from_pretrained(ensure_tiny_model())

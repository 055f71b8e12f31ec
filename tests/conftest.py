"""Shared fixtures: the tiny model's tokenizer (loaded once per session), the tiny model cut to a few blocks for
tests of mechanics, an isolated cache, reachable fake hubs."""

from __future__ import annotations

import pytest
import torch

from helpers import download
from helpers.models import MODEL_ENV
from helpers.paths import CACHE_ENV, built_in_place_of, is_complete, models_dir, one_at_a_time

# Blocks kept by ``shallow_model`` (of SmolLM2-135M's 30): enough for every code path, a tenth of the compute.
SHALLOW_LAYERS = 2


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


@pytest.fixture(scope="session")
def shallow_model():
    """SmolLM2-135M-Instruct cut to its first ``SHALLOW_LAYERS`` blocks (real embeddings, norm and tokenizer).

    For tests of mechanics (resume, DDP, out-of-memory advice, GGUF export, the pasted script): they check that
    the course's code runs and what it writes, not what the model learns, and run several times faster on it. The
    notebooks and the tests of learning keep the whole model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.tiny_model import ensure_tiny_model

    target = models_dir() / f"SmolLM2-135M-Instruct-{SHALLOW_LAYERS}-blocks"
    with one_at_a_time(target):
        if not is_complete(target):
            source = ensure_tiny_model()
            with built_in_place_of(target) as work:
                model = AutoModelForCausalLM.from_pretrained(source, num_hidden_layers=SHALLOW_LAYERS,
                                                             dtype=torch.float32)
                model.save_pretrained(work)
                AutoTokenizer.from_pretrained(source).save_pretrained(work)
    return target

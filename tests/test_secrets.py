"""No token or key is committed: not in a notebook's code or outputs, not in runs/ or outputs/, not printed by helpers.

A student who runs ``huggingface-cli login`` or pastes a ModelScope token into a cell, then commits the
executed notebook, publishes the token. The scanner names the file and the notebook cell; the token itself
is never printed in full.
"""

from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
from pathlib import Path

import pytest

from helpers.paths import REPO_ROOT

PATTERNS = {
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "OpenAI-style key": re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b"),
    "ModelScope token": re.compile(r"\bms-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "value assigned to a token/key/secret": re.compile(
        r"(?i)(?:token|secret|api_?key|access_?key|password)\w*[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9+/_\-]{32,}={0,2})"
    ),
}
BINARY_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".png", ".jpg", ".jpeg", ".gif", ".pdf", ".zip"}
TEXT_MIME = ("text/plain", "text/html", "text/markdown", "application/json", "application/javascript")


def redact(secret: str) -> str:
    return f"{secret[:6]}…({len(secret)} chars)"


def find_secrets(text: str) -> list[str]:
    """What looks like a secret in ``text``: the kind and a redacted excerpt."""
    return [f"{kind}: {redact(m.group(0))}" for kind, pattern in PATTERNS.items() for m in pattern.finditer(text)]


def notebook_parts(notebook: dict) -> list[tuple[str, str]]:
    """(where, text) for every cell's source, outputs and metadata, and the notebook's metadata."""
    parts = [("notebook metadata", json.dumps(notebook.get("metadata", {})))]
    for number, cell in enumerate(notebook.get("cells", [])):
        where = f"cell {number} (id {cell.get('id', '?')})"
        parts.append((f"{where} source", "".join(cell.get("source", ""))))
        parts.append((f"{where} metadata", json.dumps(cell.get("metadata", {}))))
        for output in cell.get("outputs", []):
            texts = [output.get("text", ""), output.get("evalue", ""), *output.get("traceback", [])]
            texts += [value for mime, value in output.get("data", {}).items() if mime in TEXT_MIME]  # no images
            parts.append((f"{where} output", "\n".join("".join(t) if isinstance(t, list) else str(t) for t in texts)))
    return parts


@functools.cache
def scan_text(text: str, notebook: bool) -> tuple[str, ...]:
    """Findings in a file's text, each with its place (cached: checkpoints repeat the same tokenizer files)."""
    parts = [("", text)]
    if notebook:
        try:
            parts = notebook_parts(json.loads(text))
        except ValueError:
            parts = [("unparsable notebook", text)]
    return tuple(f"{' ' * bool(where)}{where}: {found}" for where, part in parts for found in find_secrets(part))


def scan_file(path: Path) -> list[str]:
    """Findings in one file, each naming the file (and the notebook cell)."""
    if path.suffix in BINARY_SUFFIXES or not path.is_file():
        return []
    raw = path.read_bytes()
    if b"\0" in raw[:8192]:
        return []
    name = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    return [f"{name}{found}" for found in scan_text(raw.decode("utf-8", "replace"), path.suffix == ".ipynb")]


def committed_files() -> list[Path]:
    """Every file git tracks (or, outside a git checkout, the notebooks and helpers)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return sorted([*REPO_ROOT.glob("notebooks/*.ipynb"), *REPO_ROOT.glob("helpers/*.py")])
    return [REPO_ROOT / name for name in listed.decode().split("\0") if name]


def run_outputs() -> list[Path]:
    """Executed notebooks, predictions, logs and checkpoints' text files in runs/ and outputs/."""
    return sorted(p for folder in ("runs", "outputs") for p in (REPO_ROOT / folder).rglob("*") if p.is_file())


def fake_token(prefix: str, length: int = 34) -> str:
    """A token-shaped string made at run time, so this file holds no literal token for scanners to flag."""
    return prefix + ("Ab3xY9" * 10)[:length]


def test_committed_files_hold_no_tokens():
    # Prevents: publishing an HF / ModelScope / GitHub token pasted into a notebook cell or printed in its output.
    findings = [found for path in committed_files() for found in scan_file(path)]
    assert not findings, "删除这些密钥并作废它们 / remove and revoke these secrets:\n" + "\n".join(findings)


def test_runs_and_outputs_hold_no_tokens():
    # Prevents: sharing an executed notebook in runs/ or an outputs/ folder (e.g. to a classmate) with a token.
    findings = [found for path in run_outputs() for found in scan_file(path)]
    assert not findings, "删除这些密钥并作废它们 / remove and revoke these secrets:\n" + "\n".join(findings)


@pytest.mark.parametrize(
    "secret",
    [
        fake_token("hf_"),
        fake_token("sk-proj-", 40),
        fake_token("ghp_", 36),
        fake_token("github_pat_", 40),
        "ms-" + "-".join(("0123abcd", "4567", "89ab", "cdef", "0123456789ab")),
        "AKIA" + "ABCDEFGHIJ234567",
        "aws_secret_access_key = " + fake_token("", 40),
        'MODELSCOPE_API_TOKEN="' + fake_token("", 36) + '"',
    ],
    ids=["hf", "openai", "github", "github-pat", "modelscope", "aws-id", "aws-secret", "assigned"],
)
def test_scanner_catches_a_planted_token_and_names_the_cell(tmp_path, secret):
    # Prevents: a scanner that passes because it cannot see anything.
    notebook = {"metadata": {}, "cells": [
        {"cell_type": "code", "id": "c01", "source": "x = 1", "metadata": {}, "outputs": []},
        {"cell_type": "code", "id": "c02", "source": "print(x)", "metadata": {}, "outputs": [
            {"output_type": "stream", "name": "stdout", "text": [f"logged in with {secret}\n"]}]},
    ]}
    path = tmp_path / "leak.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    findings = scan_file(path)
    assert findings and all(f.startswith(f"{path} cell 1 (id c02) output:") for f in findings)
    assert secret[8:] not in "\n".join(findings)  # the report never repeats the secret


def test_ordinary_course_text_is_not_flagged():
    # Prevents: false alarms on the words the course uses (tokens, keys, base64 plots, hashes in file names).
    text = ('"pad_token": "<|im_end|>", "num_tokens": 698.0, max_new_tokens=48, key="q_proj", '
            '"image/png": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk", task-specific, '
            "hf_endpoint(), sk-learn")
    assert find_secrets(text) == []


SECRET_NAMES = re.compile(r"(?i)^(?:.*_)?(?:key|api_?key|secret|password|passwd|hf_token|access_token|auth_token)$")
REPORTING_CALLS = {"print", "warn", "info", "warning", "error", "debug", "exception", "write"}


def printed_secrets(source: str) -> list[str]:
    """Calls that print, log or raise a message formatting a variable named like a secret (api_key, token...)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        func = getattr(node, "func", None)
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if not (name in REPORTING_CALLS or name.endswith(("Error", "Exception"))):
            continue
        for value in ast.walk(node):
            if isinstance(value, ast.FormattedValue):
                names = [n.id for n in ast.walk(value.value) if isinstance(n, ast.Name)]
                found += [f"line {node.lineno}: {name}(... {n} ...)" for n in names if SECRET_NAMES.match(n)]
    return found


def test_helpers_never_print_a_token():
    # Prevents: a helper echoing the judge's API key or an HF token into a notebook output that gets committed.
    sources = [*REPO_ROOT.glob("helpers/*.py"), *REPO_ROOT.glob("scripts/*.py"), *REPO_ROOT.glob("benchmarks/*.py")]
    findings = [f"{path.name} {f}" for path in sources for f in printed_secrets(path.read_text(encoding="utf-8"))]
    assert not findings, "\n".join(findings)
    hub_tokens = re.compile(r"HF_TOKEN|HUGGING_FACE_HUB_TOKEN|MODELSCOPE_API_TOKEN|get_token\(")
    for path in REPO_ROOT.glob("helpers/*.py"):  # hub tokens stay with the hub clients: helpers never read them
        assert not hub_tokens.search(path.read_text(encoding="utf-8")), path


def test_print_checker_sees_a_printed_key():
    leaky = 'import sys\napi_key = "x"\nprint(f"using {api_key}")\nraise ValueError(f"bad {hf_token}")\n'
    assert [f.split(":")[0] for f in printed_secrets(leaky)] == ["line 3", "line 4"]

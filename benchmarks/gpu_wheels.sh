#!/usr/bin/env bash
# 为 GPU 检查下载 GPU 机器上缺的包 / Fetch the wheels benchmarks/gpu_check.py needs on a GPU machine that lacks them.
# That machine (Python 3.12, x86-64, no network; seen 2026-12-04) has torch 2.11, accelerate and triton, but
# transformers 5.17 and another peft, and no bitsandbytes, trl, datasets or liger-kernel. Carried: the course's pins
# (requirements.txt, requirements-gpu.txt) and what datasets needs (dill, multiprocess), about 61 MB.
# Then: carry .whl and start the command there with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pin() { grep -h "^$1==" requirements.txt requirements-gpu.txt; }
rm -rf .whl
for wheel in "$(pin bitsandbytes)" "$(pin transformers)" "$(pin peft)" "$(pin trl)" "$(pin datasets)" \
             "$(pin liger-kernel)" "dill==0.4.1" "multiprocess==0.70.19"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$wheel"
done
du -sh .whl && ls .whl

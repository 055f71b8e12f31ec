# 两条命令 / two commands:
#   make course   安装缺的依赖并运行课程（默认 tiny 配置）/ set up and run the course
#   make test     安装缺的依赖并运行全部测试 / set up and run every test
# 可选 / opt-in:
#   make check-llamafactory  在独立环境 .venv-llamafactory 里装 LLaMA-Factory 0.9.5，与课程的导出逐项对照（2 核 CPU：首次约 8 分钟，之后约 2 分钟）
#                            LLaMA-Factory 0.9.5 in its own venv, checked against the course's export (README)
PYTHON ?= python3
export PYTHON

.PHONY: setup course test lint check-llamafactory

setup:
	bash scripts/setup.sh

course: setup
	$(PYTHON) -m helpers.course run

# The tests always use the tiny profile: deterministic, offline, CPU-friendly.
test: setup
	COURSE_PROFILE=tiny $(PYTHON) -m ruff check .
	COURSE_PROFILE=tiny $(PYTHON) -m pytest -n 2 tests
# Notebooks run one at a time: two training kernels on 2 cores oversubscribe torch's threads (10x slower).
	COURSE_PROFILE=tiny $(PYTHON) -m pytest notebooks \
		--nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

lint:
	$(PYTHON) -m ruff check .

# Not part of `make test`: installs LLaMA-Factory beside the course (its pins exclude the course's) and trains.
check-llamafactory:
	$(PYTHON) scripts/check_llamafactory.py

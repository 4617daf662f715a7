# Every target works in .venv, which the first one run creates: nothing goes into the system's Python.
# `make demo` installs only what the demo needs; `make install` and `make test` add the test tools
# (pytest, hypothesis, Ray, TensorBoard), `make bench` the benchmarks' peers (pytorch-lightning).
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision pinned to the builds this machine kind carries. A machine without a GPU can take
# the much smaller CPU-only build: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH := torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=

.PHONY: install demo test test-all bench

$(BIN)/python:
	python3 -m venv $(VENV)

$(VENV)/.lrlab: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH) && $(BIN)/python -m pip install --quiet -e . && touch $@

$(VENV)/.dev: $(VENV)/.lrlab
	$(BIN)/python -m pip install --quiet -e '.[dev]' && touch $@

$(VENV)/.bench: $(VENV)/.lrlab
	$(BIN)/python -m pip install --quiet -e '.[bench]' && touch $@

install: $(VENV)/.dev

demo: $(VENV)/.lrlab  ## the article's StepLR run on real Fashion-MNIST
	$(BIN)/lrlab train --dataset fashion-mnist --model cnn --optimizer sgd:lr=0.05,momentum=0.9,weight_decay=5e-4 --schedule step:step_size=5,gamma=0.5 --epochs 20 --seed 0 --out runs/step --overwrite

# The tests start `lrlab` and `torchrun` as a user would: the environment's bin folder comes first on PATH.
test: $(VENV)/.dev
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q

test-all: $(VENV)/.dev
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m ''

bench: $(VENV)/.bench  ## about 25 minutes on 2 cores
	$(BIN)/python benchmarks/throughput.py --epochs 2 && $(BIN)/python benchmarks/profile_step.py && $(BIN)/python benchmarks/compile.py \
		&& $(BIN)/python benchmarks/overhead.py && $(BIN)/python benchmarks/speedrun.py && $(BIN)/python benchmarks/scaling.py

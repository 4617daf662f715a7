PYTHON ?= python3

.PHONY: install demo test test-all bench

install:  ## torch and torchvision pinned to the builds this machine kind carries
	$(PYTHON) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 && $(PYTHON) -m pip install --quiet -e '.[dev]'

demo: install  ## the article's StepLR run on real Fashion-MNIST
	lrlab train --dataset fashion-mnist --model cnn --optimizer sgd:lr=0.05,momentum=0.9,weight_decay=5e-4 --schedule step:step_size=5,gamma=0.5 --epochs 20 --seed 0 --out runs/step --overwrite

test:
	$(PYTHON) -m pytest -q

test-all:
	$(PYTHON) -m pytest -q -m ''

bench:  ## needs pytorch-lightning for the Lightning peer; about 25 minutes on 2 cores
	$(PYTHON) benchmarks/throughput.py --epochs 2 && $(PYTHON) benchmarks/profile_step.py && $(PYTHON) benchmarks/compile.py && $(PYTHON) benchmarks/overhead.py \
		&& $(PYTHON) benchmarks/speedrun.py && $(PYTHON) benchmarks/scaling.py

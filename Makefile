# The two commands of the README. Each sets up its own virtualenv on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup demo test benchmarks gpu-check gpu-wheels gpu-check-offline ard-ablation clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/.installed

demo: setup  ## the main job on the embedded default: every method x every refiner, table printed, HTML report
	$(BIN)/bench run
	$(BIN)/bench report

test: setup  ## lint (ruff, rules in pyproject.toml), then the test suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=15  # the slowest tests, to keep the suite under 15 min

$(BIN)/.benchmarks: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[benchmarks]'
	touch $@

benchmarks: $(BIN)/.benchmarks  ## speed as ratios at full size (tens of minutes); `pytest benchmarks` is the small form
	$(BIN)/python -m pytest benchmarks --bench-size full --benchmark-only --benchmark-columns=min,mean,max,rounds --benchmark-group-by=func

gpu-check: setup  ## on a GPU machine (<= 8 min): every CUDA path, fp16 vs fp32, MuSc/ARD speed; JSON + table
	$(BIN)/python scripts/gpu_check.py --device cuda --out results/gpu_check.json

# A GPU machine without a package index whose python3 holds PyTorch (an NVIDIA PyTorch image): download
# the rest here (scripts/gpu_wheels.txt, for that machine's Python), copy the tree there, run gpu-check-offline.
GPU_PYTHON_VERSION ?= 3.12
WHEELS ?= .whl
gpu-wheels:  ## here, online: the wheels an offline GPU machine lacks, into $(WHEELS)/
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
		--python-version $(GPU_PYTHON_VERSION) --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 -d $(WHEELS) -r scripts/gpu_wheels.txt

gpu-check-offline:  ## there, offline: install $(WHEELS)/ beside its PyTorch (no index), then the GPU check
	$(PYTHON) -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target /tmp/bench-site $(WHEELS)/*.whl
	PYTHONPATH=/tmp/bench-site:src $(PYTHON) scripts/gpu_check.py --device cuda --out results/gpu_check.json

$(BIN)/.photos: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -e '.[photos]'
	touch $@

ard-ablation: $(BIN)/.photos  ## issue 15: none / ARD variants / DeSTSeg / RealNet / guided, 3 seeds, embedded + photos (hours on CPU)
	$(BIN)/python scripts/ard_ablation.py --seeds 0,1,2 --data embedded --data photos --out results/ard-ablation

clean:
	rm -rf $(VENV) results/mlflow.db results/artifacts results/data results/report.html

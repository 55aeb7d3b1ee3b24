# Zero to NanoChat. The README's two commands:
#   make course   set up, then run the whole chain of notebooks (PROFILE=auto|smoke|cpu|gpu, FROM=NN, UPTO=NN)
#   make test     set up, then every check CI runs (MIRROR=DIR copies datasets from a local folder)
# Needs only Python 3.11+ and make.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PROFILE ?= auto
MIRROR  ?=
FROM    ?=
UPTO    ?=
NB      ?=
HOST    ?= 127.0.0.1
PORT    ?= 8000
STAMP   := $(VENV)/.installed
TORCH   := $(shell grep -m1 '^torch==' requirements.txt)

# Kernels installed in the virtual environment win over any of the same name elsewhere.
export JUPYTER_PREFER_ENV_PATH := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: help setup data course test browser serve lab lab-root execute blog report readme lint mutants clean

help:
	@echo "make course [PROFILE=auto|smoke|cpu|gpu] [FROM=NN] [UPTO=NN]   run the notebooks headless"
	@echo "make test [MIRROR=DIR]                                         run every check CI runs"
	@echo "make data [MIRROR=DIR]   make lab   make execute [NB=NN]   make blog   make report"

setup: $(STAMP)

# Re-runs only when the pins change; seconds when the environment exists.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (found " + sys.version.split()[0] + ")")'
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) ci/install_kernel.py
	@touch $(STAMP)
	@echo "setup: environment ready in $(VENV) (kernel 'nanolm')"

data: setup
	$(PY) -m nanolm.core.data fetch $(if $(MIRROR),--mirror $(MIRROR))

course: setup data
	$(PY) ci/run_course.py --profile $(PROFILE) $(if $(FROM),--from $(FROM)) $(if $(UPTO),--upto $(UPTO))

# The browser test (notebook 16's web page) drives the system's Chromium through Playwright. As root with
# apt (CI, the Docker image) it is installed here; elsewhere install it yourself, or its test skips and says so.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
	      { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null; } || \
	      echo "browser: could not install chromium with apt; the browser test will skip"; \
	    else echo "browser: no chromium; install it (e.g. apt-get install chromium) or the browser test skips"; fi; }

# SmolLM2 with the course's adapters and tools, and the course's chat model: http://127.0.0.1:8000/
serve: setup data
	$(PY) -m nanolm.use.serve --profile $(PROFILE) --host $(HOST) --port $(PORT)

# COURSE.md's Testing section, in order.
test: setup data browser
	@echo "== 1/5 library tests =="
	$(PY) -m pytest tests -m "not notebooks" -q
	@echo "== 2/5 the chain (smoke) =="
	$(PY) ci/run_course.py --profile smoke
	@echo "== 3/5 nbval (smoke) =="
	NANOLM_PROFILE=smoke $(PY) -m pytest notebooks --nbval-lax --nbval-current-env \
		--nbval-sanitize-with ci/nbval_sanitize.cfg --nbval-cell-timeout 600 -q -p no:cacheprovider
	@echo "== 4/5 notebook hygiene and 5/5 blog export =="
	$(PY) -m pytest tests -m notebooks -q

lab: setup data
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

# JupyterLab inside a container (Dockerfile): as root, reachable from the host.
lab-root: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --ip=0.0.0.0 --port=8888 --allow-root --no-browser

# Refresh the stored outputs with a real cpu-profile run (NB=03 for one notebook).
execute: setup data
	$(PY) ci/run_course.py --profile cpu --inplace $(if $(NB),--only $(NB))

blog: setup
	$(PY) ci/export_blog.py --out build/blog

report: setup
	$(PY) -m nanolm.core.report

# Refresh the README's syllabus runtimes from the stored notebooks (cpu) and the last smoke chain.
readme: setup
	$(PY) -m nanolm.core.report --readme

lint: setup
	$(VENV)/bin/ruff check shared ci tests
	$(VENV)/bin/lint-imports

# Mutation testing of key library modules (slow; not part of `make test`): kill rate per module.
mutants: setup data
	$(PY) ci/mutants.py

clean:
	rm -rf build

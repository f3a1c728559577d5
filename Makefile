# Build, test and read "Attention as Optimization: the energy principle".
#   make book   build the HTML book into _build/html (notebooks executed, warnings are errors)
#   make test   unit tests + notebooks (pytest/nbval), then the clean -W book build
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
# --dist loadfile: all cells of a notebook go to one worker (nbval runs them in one kernel)
PYTEST_ARGS ?= -n 2 --dist loadfile

VENV_STAMP   := $(VENV)/.installed
ASSETS_STAMP := _offline/.installed
MATHJAX_DIR  := node_modules/mathjax/es5
WIDGETS_DIR  := node_modules/@jupyter-widgets/html-manager/dist

.PHONY: help venv assets book serve lab lint test browser-test bench experiments experiments-smoke clean distclean

help:
	@echo "make book       build the book (_build/html/index.html)"
	@echo "make test       pytest (library + notebooks via nbval), then the clean -W book build"
	@echo "make serve      serve _build/html on http://127.0.0.1:$(PORT)"
	@echo "make lab        JupyterLab on the book's notebooks"
	@echo "make browser-test  headless-Chromium checks of the built site (_build/html)"
	@echo "make bench      benchmarks: ratios against reference implementations"
	@echo "make experiments  re-run the default experiment suite into results/ (about 15-30 min)"
	@echo "make lint       ruff on energylib, tests, benchmarks and the notebooks"
	@echo "make clean      remove _build, _offline, node_modules (keeps .venv); distclean also .venv"

# --- Python environment (exact pins in requirements.txt, energylib installed editable) ---
venv: $(VENV_STAMP)
$(VENV_STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

# --- Front-end assets for an offline site (MathJax, widget manager, require.js) ---
assets: $(ASSETS_STAMP)
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	touch $@
$(ASSETS_STAMP): node_modules/.package-lock.json $(wildcard book/_static_src/*)
	rm -rf _offline
	mkdir -p _offline/mathjax/output/chtml/fonts _offline/widgets
	cp $(MATHJAX_DIR)/tex-mml-chtml.js _offline/mathjax/
	cp -r $(MATHJAX_DIR)/output/chtml/fonts/woff-v2 _offline/mathjax/output/chtml/fonts/
	cp $(WIDGETS_DIR)/embed-amd.js node_modules/requirejs/require.js _offline/widgets/
	# icon fonts of the widget manager: it loads them from the folder of embed-amd.js
	cp $(WIDGETS_DIR)/*.woff2 $(WIDGETS_DIR)/*.woff $(WIDGETS_DIR)/*.ttf $(WIDGETS_DIR)/*.eot \
	   $(WIDGETS_DIR)/*.svg _offline/widgets/
	cp book/_static_src/*.js _offline/
	touch $@

# --- The book ---
book: $(VENV_STAMP) $(ASSETS_STAMP)
	rm -rf _build
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "Book: $(CURDIR)/_build/html/index.html"

serve:
	@test -f _build/html/index.html || { echo "no _build/html: run 'make book' first" >&2; exit 1; }
	@echo "Serving http://127.0.0.1:$(PORT)/ (Ctrl-C to stop)"
	$(PYTHON) -m http.server $(PORT) --bind 127.0.0.1 --directory _build/html

lab: $(VENV_STAMP)
	$(BIN)/jupyter lab --no-browser --allow-root --ip 127.0.0.1 --notebook-dir book

lint: $(VENV_STAMP)
	$(BIN)/ruff check energylib tests benchmarks book

test: $(VENV_STAMP) $(ASSETS_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory book
	$(MAKE) --no-print-directory browser-test

# Every page of the built site in headless Chromium (Debian's package, installed when missing;
# never a browser downloaded by a test tool), with every non-local request aborted.
browser-test: $(VENV_STAMP)
	@test -f _build/html/index.html || { echo "no _build/html: run 'make book' first" >&2; exit 1; }
	command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
	$(BIN)/python -m pytest tests/browser --site _build/html

bench: $(VENV_STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/modules.py
	$(BIN)/python benchmarks/explorers.py

# The committed results/ come from this command (seeds 0, 1, 2; the book's Experiments part
# reads them). experiments-smoke is the same pipeline on tiny settings, written to a temp folder.
experiments: $(VENV_STAMP)
	$(BIN)/python -m energylib.experiments suite --out results --threads 1

experiments-smoke: $(VENV_STAMP)
	$(BIN)/python -m energylib.experiments suite --smoke --seeds 0

clean:
	rm -rf _build _offline node_modules

distclean: clean
	rm -rf $(VENV) *.egg-info

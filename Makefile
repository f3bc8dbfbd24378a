# paperlab: the two commands are `make book` and `make test`; both set up .venv first.
# Every install is constrained by constraints.txt (torch==2.13.0 and the full lock), so nothing pulls a
# CUDA build of torch on a CPU machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.paperlab-installed
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json
PIP    := $(BIN)/python -m pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all venv book book-offline chapter serve test lint unit chapters content-check bench lab lock clean \
	clean-cache

all: test

venv: $(STAMP) $(LAB_SETTINGS)

# Re-run only when the dependency definitions change (idempotent, skipped when up to date).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --constraint constraints.txt --editable '.[book,dev]'
	@touch $(STAMP)

# JupyterLab's settings for `make lab`: chapters open as notebooks (Jupytext), no news prompt, no update
# check. Refreshed whenever tools/jupyterlab-overrides.json changes.
$(LAB_SETTINGS): tools/jupyterlab-overrides.json $(STAMP)
	@mkdir -p $(dir $@)
	@cp $< $@

## The book: execute every chapter (cached) and render _build/html: the Jupyter Book 2 site when its theme
## can be downloaded, else the offline book (Sphinx). The last line says which, and how to view it.
## TIMEOUT: the seconds one cell may run (a slower machine may need more; finished runs stay cached).
TIMEOUT ?= 1800
book: $(STAMP)
	$(BIN)/python tools/book.py html --timeout $(TIMEOUT)

## The offline book (Sphinx) even when the web is reachable.
book-offline: $(STAMP)
	$(BIN)/python tools/book.py html --offline --timeout $(TIMEOUT)

## One chapter: execute it (cached) and render the book, e.g. `make chapter CHAPTER=02-ssd` (or CHAPTER=02).
## Chapters not executed yet are shown without outputs.
chapter: $(STAMP)
	@test -n "$(CHAPTER)" || { echo "name the chapter: make chapter CHAPTER=02-ssd (its file name or number)"; exit 2; }
	$(BIN)/python tools/book.py html --only "$(CHAPTER)" --timeout $(TIMEOUT)

## Serve the built book on http://127.0.0.1:$(PORT)/ (its pages need a server, not file://).
PORT ?= 8000
serve: $(STAMP)
	$(BIN)/python tools/book.py serve --port $(PORT)

## The tests: lint, unit tests, every chapter in the fast profile (nbmake), content check (MyST and Sphinx).
test: lint unit chapters content-check

lint: $(STAMP)
	$(BIN)/ruff check src kernels tests tools

unit: $(STAMP)
	$(BIN)/python -m pytest -q --durations=10

chapters: $(STAMP)
	$(BIN)/python tools/book.py convert .nbtest
	PAPERLAB_PROFILE=fast PAPERLAB_PROGRESS=0 PAPERLAB_STATIC=1 $(BIN)/python -m pytest -q --nbmake --nbmake-timeout=300 \
		--overwrite --durations=0 -p no:cacheprovider .nbtest

content-check: $(STAMP)
	$(BIN)/python tools/book.py check --executed .nbtest

bench: $(STAMP)
	$(BIN)/python -m paperlab.bench

## Open the chapters in JupyterLab: the .md files open as notebooks (Jupytext, configured by
## book/jupytext.toml so that saving leaves a chapter byte-identical), MyST renders (jupyterlab-myst),
## and each chapter's explorer is live (ipywidgets).
lab: $(STAMP) $(LAB_SETTINGS)
	$(BIN)/python -c 'import os, sys; from paperlab.utils import reuse_freed_memory; reuse_freed_memory(); \
		os.execv(sys.argv[1], sys.argv[1:])' $(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root,) book/

## Regenerate the lock file from the current venv (after changing pyproject.toml's pins).
lock: $(STAMP)
	@{ sed -n '1,4p' constraints.txt; $(PIP) freeze --exclude-editable | grep -vE '^(torch|pip|setuptools)=='; } \
		> constraints.txt.new && mv constraints.txt.new constraints.txt

clean-cache:
	rm -rf .cache/paperlab $${PAPERLAB_CACHE:+"$$PAPERLAB_CACHE"}

clean:
	rm -rf _build .nbtest .pytest_cache .ruff_cache

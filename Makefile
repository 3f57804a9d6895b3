# Two commands on a fresh machine (Python 3.10+ with venv):
#   make lessons   run the lessons offline on the CPU, English and Portuguese -> build/lessons/
#   make test      run the tests (notebooks included)
# Both first make .venv with the CPU build of torch and the package (once).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: lessons test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"  # the CPU build; an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

lessons: $(VENV)/.installed
	$(PY) -m dreamlab.lessons

test: $(VENV)/.installed  # two workers, a test file each: the lessons, the Colab rehearsal side by side
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf build output data/random-sd

# The notebooks in a real browser: JupyterLab driven by Playwright with Debian's Chromium
# (apt-get install chromium; Playwright's own browser download is not needed), screenshots -> build/browser/
.PHONY: browser
browser: $(VENV)/.installed
	$(PY) -m pytest -q -p no:xdist tests/test_browser.py

# The README's two commands: `make demo` (the main job on the embedded digits data) and
# `make test` (the test suite). Both create .venv, install the pinned requirements and the
# package itself (editable) on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO_CONFIG ?= configs/quickstart/harmony_vit_tiny_digits.yaml
DEMO_OUT ?= output/quickstart/demo

.PHONY: demo test test-slow venv clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) launch.py --launch tools/train.py -c $(DEMO_CONFIG) output_dir=$(DEMO_OUT)
	$(PY) launch.py --launch eval_common/eval_knn.py --pretrained $(DEMO_OUT)/main_vit_checkpoint.pth --compare_random_init

test: $(VENV)/.installed
	$(PY) -m pytest -q -ra -m "not slow"

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -ra -m slow

clean:
	rm -rf output

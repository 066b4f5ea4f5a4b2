# `make demo` and `make test` each set up .venv from nothing (torch is pinned to the CPU wheel this
# machine has; on a GPU machine install the torch you want first and the pin is already satisfied).
VENV := .venv
PY := $(VENV)/bin/python
TEACHER := models/hydrahead-teacher-3m

.PHONY: install demo demo-quick test teacher clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

# the whole HydraHead pipeline on the shipped teacher; `make demo-quick` is the few-minute version
demo: install
	$(VENV)/bin/hydrahead pipeline --teacher $(TEACHER) --out runs/demo --results results/demo

demo-quick: install
	$(VENV)/bin/hydrahead pipeline --teacher $(TEACHER) --out runs/demo-quick --results results/demo-quick --quick

test: install
	$(PY) -m pytest -q

teacher: install
	$(VENV)/bin/hydrahead teacher train --out runs/teacher

clean:
	rm -rf $(VENV) results runs

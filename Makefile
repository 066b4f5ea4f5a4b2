# `make demo` and `make test` each set up .venv from nothing, with the exact versions of requirements.lock
# (torch is pinned to the CPU wheel this machine has, 2.13.0+cpu, as installed; on a GPU machine change the
# lock's torch line to the build you install). `make test-latest` runs the suite in .venv-latest on the newest
# versions pyproject.toml allows (torch stays at the pinned CPU wheel).
VENV := .venv
PY := $(VENV)/bin/python
LATEST := .venv-latest
LOCK := requirements.lock
TORCH := torch==2.13.0
TEACHER := models/hydrahead-teacher-3m

.PHONY: install demo demo-quick test test-latest lock teacher clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed

# the whole HydraHead pipeline on the shipped teacher; `make demo-quick` is the few-minute version
demo: install
	$(VENV)/bin/hydrahead pipeline --teacher $(TEACHER) --out runs/demo --results results/demo

demo-quick: install
	$(VENV)/bin/hydrahead pipeline --teacher $(TEACHER) --out runs/demo-quick --results results/demo-quick --quick

test: install
	$(PY) -m pytest -q

# a separate venv with the newest releases the bounds in pyproject.toml allow, made anew each time
test-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]" "$(TORCH)"
	$(LATEST)/bin/python -m pip check
	@$(LATEST)/bin/python -c "import torch, transformers; print(f'test-latest: torch {torch.__version__}, transformers {transformers.__version__}')"
	$(LATEST)/bin/python -m pytest -q

# rewrite the lock from the newest allowed versions (then run `make test` before committing it)
lock: test-latest
	{ head -2 $(LOCK); $(LATEST)/bin/python -m pip freeze --exclude-editable; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

teacher: install
	$(VENV)/bin/hydrahead teacher train --out runs/teacher

clean:
	rm -rf $(VENV) $(LATEST) results runs

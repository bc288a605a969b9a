# make run: execute the notebook end to end (sets up .venv and data first)
# make test: the test suite, including the notebook under nbval and the browser test
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# make results: runs trained at once (the CPU threads are shared between them)
JOBS ?= 2
NOTEBOOK := bmi219_autoencoder.ipynb

.PHONY: run test lint format lab results mutants bench data browser venv clean assignment autograde

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

data: venv
	$(PY) ae_cli.py fetch

# A Chrome or Chromium for the browser tests: $CHROME_PATH, an installed one, else Playwright's own
# download; without one the browser tests are skipped with a message (a failure under CI=true).
browser: venv
	$(PY) tests/find_browser.py --install

run: data
	$(PY) -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=3600 $(NOTEBOOK)

# Lint and format checks first (ruff, settings in pyproject.toml), then every test and the notebook.
test: data browser lint
	AE_QUICK=1 IPYTHONDIR=$(CURDIR)/tools/ipython $(PY) -m pytest tests --nbval-lax $(NOTEBOOK) -v

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Rewrite the code in the project's format (what `make lint` checks).
format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

lab: data
	$(PY) -m jupyter lab $(NOTEBOOK)

results: data
	$(PY) ae_cli.py experiments --jobs $(JOBS)

# Mutation testing of the core against the fast tests (resumable: results in mutants/); writes
# mutation/summary.md (killed, survived, timed out per section) and prints it.
mutants: data
	$(PY) tools/mutants.py run

# The student handout student/ from the model answer (nbgrader, a dev requirement; docs/teaching.md).
assignment: venv
	$(PY) tools/assignment.py generate

# Grade one submitted notebook in quick mode: each task's points, the written answers left to grade by hand.
autograde: data
	@test -n "$(SUBMISSION)" || { echo "usage: make autograde SUBMISSION=path/to/notebook.ipynb" >&2; exit 2; }
	$(PY) tools/autograde.py "$(SUBMISSION)"

bench: data
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_explorer.py

clean:
	rm -rf $(VENV) test-artifacts runs mutants

# make lab / make run: open or execute the notebook (set up .venv from requirements.txt and data first)
# make test: the test suite, including the notebook under nbval and the browser test (adds requirements-dev.txt)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# make results: runs trained at once (the CPU threads are shared between them)
JOBS ?= 2
NOTEBOOK := bmi219_autoencoder.ipynb

.PHONY: run test lint format lab results mutants bench data browser venv dev clean assignment autograde

# The runtime (requirements.txt): what the notebook needs. tools/check_python.py stops here, in one line,
# when $(PYTHON) is older than the pins need.
venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	@$(PYTHON) tools/check_python.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The development tools on top (requirements-dev.txt: pytest, nbval, playwright, ruff, mutmut).
dev: $(VENV)/.installed-dev
$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

data: venv
	$(PY) ae_cli.py fetch

# A Chrome or Chromium for the browser tests: $CHROME_PATH, an installed one, else Playwright's own
# download; without one the browser tests are skipped with a message (a failure under CI=true).
browser: dev
	$(PY) tests/find_browser.py --install

run: data
	$(PY) -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=3600 $(NOTEBOOK)

# Lint and format checks first (ruff, settings in pyproject.toml), then every test and the notebook.
test: data dev browser lint
	AE_QUICK=1 IPYTHONDIR=$(CURDIR)/tools/ipython $(PY) -m pytest tests --nbval-lax $(NOTEBOOK) -v

lint: dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Rewrite the code in the project's format (what `make lint` checks).
format: dev
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

lab: data
	$(PY) -m jupyter lab $(NOTEBOOK)

results: data
	$(PY) ae_cli.py experiments --jobs $(JOBS)

# Mutation testing of the core against the fast tests (resumable: results in mutants/); writes
# mutation/summary.md (killed, survived, timed out per section) and prints it.
mutants: data dev
	$(PY) tools/mutants.py run

# The student handout student/ from the model answer (nbgrader, a dev requirement; docs/teaching.md).
assignment: dev
	$(PY) tools/assignment.py generate

# Grade one submitted notebook in quick mode: each task's points, the written answers left to grade by hand.
autograde: data dev
	@test -n "$(SUBMISSION)" || { echo "usage: make autograde SUBMISSION=path/to/notebook.ipynb" >&2; exit 2; }
	$(PY) tools/autograde.py "$(SUBMISSION)"

bench: data dev
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_explorer.py

clean:
	rm -rf $(VENV) .cache test-artifacts runs mutants

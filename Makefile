# The two commands: `make demo` (runs the quickstart on the embedded default, no server)
# and `make test` (installs everything, runs the quality gates and the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A newer interpreter to run the suite on too, when the machine has one (pyenv).
NEWER_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3) $(shell command -v python3.13 2>/dev/null))

.PHONY: install demo todo test lint typecheck pytest test-newer docs fuzz bench bench-snapshot \
	bench-instructions bench-pg-instructions profile load-test clean ai-chat bench-ai

EXTRAS ?= all,dev
# The stamp names the extras installed: a venv made with other extras is brought up to date.
comma := ,
INSTALLED := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

install: $(INSTALLED)

DEMO_DB ?= demo.db

demo: install
	$(VENV)/bin/pydantic-toast migrate sqlite:///$(DEMO_DB)
	DEMO_STORAGE_URL=sqlite:///$(DEMO_DB) $(PY) examples/quickstart_demo.py

# The todo service from examples/todo_api on PostgreSQL (migrates first).
DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/postgres

todo: install
	$(VENV)/bin/pydantic-toast migrate $(DATABASE_URL)
	DATABASE_URL=$(DATABASE_URL) $(VENV)/bin/uvicorn examples.todo_api.app:app --port 8000

# The Pydantic AI chat from examples/ai_chat on PostgreSQL: offline unless AI_CHAT_MODEL is set
# (e.g. AI_CHAT_MODEL=openai:gpt-5 with OPENAI_API_KEY and the openai package installed).
ai-chat: install
	$(VENV)/bin/pydantic-toast migrate $(DATABASE_URL)
	DATABASE_URL=$(DATABASE_URL) $(VENV)/bin/uvicorn examples.ai_chat.app:app --port 8001

# Conversation store costs (append vs rewrite, load, spilled tokens) on memory, Redis, PostgreSQL.
bench-ai: install
	$(PY) bench/ai_conversations.py $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy --strict src

pytest: install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck docs pytest test-newer

# The documentation site (MkDocs + Material + mkdocstrings) into site/; warnings are errors.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

# The fidelity property test at length: FUZZ_EXAMPLES generated models per backend, one backend
# after another, with a random seed (FUZZ_SEED=... repeats a run). Prints per backend: the seed,
# examples, changed, refused, saved-but-unreadable and the duration. CI runs the same test with a
# fixed seed and fewer examples.
FUZZ_EXAMPLES ?= 5000
FUZZ_SEED ?=

fuzz: install
	TOAST_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) TOAST_FUZZ_SEED=$(FUZZ_SEED) $(VENV)/bin/pytest \
		tests/integration/test_fidelity.py -s -q -p no:cacheprovider --timeout=0

# Runs the suite again on the newer interpreter, when there is one (the distribution test,
# which builds the pure-Python wheel and five venvs, runs once, on the main interpreter), with
# hiredis: the Redis tests then run on both reply readers (redis-py's Python one above).
test-newer:
ifneq ($(NEWER_PYTHON),)
	$(MAKE) pytest PYTHON=$(NEWER_PYTHON) VENV=.venv-newer EXTRAS=all,dev,hiredis \
		PYTEST_ARGS="$(PYTEST_ARGS) --deselect tests/integration/test_distributions.py"
else
	@echo "no newer Python found: ran the suite on $$($(PY) --version) only"
endif

# The alternatives compared (SQLModel, redis-om) live in their own environment.
BENCH_VENV ?= .venv-bench

$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[all,dev,bench]'
	touch $@

# Interleaved benchmark on throwaway servers (bench/run.py --help); results in bench/results/.
bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/run.py $(BENCH_ARGS)

# The same, written over the committed snapshot (bench/RESULTS.md, results.json, ratios.png).
bench-snapshot: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/run.py --out bench $(BENCH_ARGS)

# Callgrind instruction counts per operation on memory:// next to plain Pydantic.
bench-instructions: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/instructions.py $(BENCH_ARGS)

# Callgrind instruction counts per PostgreSQL save and load against raw asyncpg (throwaway
# database on the server at TOAST_BENCH_POSTGRES_URL or the local default).
bench-pg-instructions: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/pg_instructions.py $(BENCH_ARGS)

# py-spy profile of one system and operation, e.g.
# make profile PROFILE_ARGS='--system "async (Redis)" --op load --workload "100 KB"'
profile: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/profile.py $(PROFILE_ARGS)

load-test: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/load_todo.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-newer $(BENCH_VENV) .mypy_cache .ruff_cache .pytest_cache site

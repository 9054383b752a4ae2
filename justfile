# Developer shortcuts (https://github.com/casey/just). Everything also works without `just`:
# the recipes only call run.py and the tools in .venv.

set dotenv-load := false

# start the API on embedded defaults (or DATABASE_URL/REDIS_URL when set)
dev *ARGS:
    python3 run.py serve {{ARGS}}

# run the test suite (embedded PostgreSQL unless DATABASE_URL is set)
test *ARGS:
    python3 run.py test {{ARGS}}

# ruff + mypy (strict on the package)
lint:
    .venv/bin/ruff check robosystems tests alembic bench run.py
    .venv/bin/ruff format --check robosystems
    .venv/bin/mypy

# apply migrations (REV defaults to head)
migrate REV="head":
    python3 run.py migrate upgrade {{REV}}

# run the benchmarks (machine PostgreSQL; see bench/README.md)
bench:
    .venv/bin/python bench/auth_me.py

# regenerate the lock files after changing pyproject.toml
lock:
    .venv/bin/uv pip compile pyproject.toml --python-version 3.11 -q -o requirements.lock
    .venv/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 -q -o requirements-dev.lock

#!/usr/bin/env bash
# The production topology on one machine: migrate, then the Procfile's processes under honcho (the gateway's uvicorn
# workers, the ledger drainer, a Celery worker and beat); with --mock also the mock upstream and the demo tenant.
# Ctrl+C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/llmops}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export PORT=${PORT:-8000} MOCK_PORT=${MOCK_PORT:-9100}

processes=(web drain worker beat)
mock=false
for arg in "$@"; do
  case $arg in
    --mock) mock=true; processes+=(mock) ;;
    *) echo "usage: make serve [ARGS=--mock]" >&2; exit 2 ;;
  esac
done

# A Postgres database that does not exist yet is created (the server must be up).
$PY - <<'PYTHON'
import os
from urllib.parse import urlsplit

import psycopg

url = urlsplit(os.environ["DATABASE_URL"])
if url.scheme.startswith("postgres"):
    name = url.path.lstrip("/")
    with psycopg.connect(url._replace(path="/postgres").geturl(), autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')
PYTHON
$PY manage.py migrate --no-input -v 0

# Redis holds the ledger records not yet drained and the budget counters: it must persist with AOF. A Redis that does
# not is left as it is (it may be shared) with a warning, unless LLMOPS_REDIS_ENABLE_AOF=true allows turning AOF on.
$PY - <<'PYTHON'
import os
import sys

import redis

from core.redis import redis_persistence_problem

client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_connect_timeout=5)
if problem := redis_persistence_problem(client):
    if os.environ.get("LLMOPS_REDIS_ENABLE_AOF", "").lower() in ("1", "true", "yes"):
        client.config_set("appendfsync", "everysec")
        client.config_set("appendonly", "yes")
        print("Redis: AOF turned on (appendonly yes, appendfsync everysec), as LLMOPS_REDIS_ENABLE_AOF=true asks")
    else:
        print(f"WARNING: {problem} Or set LLMOPS_REDIS_ENABLE_AOF=true to let make serve turn it on.", file=sys.stderr)
PYTHON

if $mock; then
  # Its own key file, so the embedded demo's (var/demo-api-key) stays valid for its own database.
  export LLMOPS_DEMO_DIR=${LLMOPS_DEMO_DIR:-var/serve}
  $PY manage.py seed_demo --upstream-url "http://127.0.0.1:${MOCK_PORT}/v1"
  cat <<SNIPPET

Gateway: http://127.0.0.1:${PORT}/v1 (demo key in ${LLMOPS_DEMO_DIR}/demo-api-key). Paste into .venv/bin/python:

from openai import OpenAI
client = OpenAI(base_url="http://127.0.0.1:${PORT}/v1", api_key="$(cat "$LLMOPS_DEMO_DIR/demo-api-key")")
for question in ["Summarise our refund policy", "Summarise our refund policy", "Can you summarise our refund policy?"]:
    reply = client.chat.completions.with_raw_response.create(
        model="auto", temperature=0, messages=[{"role": "user", "content": question}])
    print(reply.parse().choices[0].message.content)
    print({k: v for k, v in reply.headers.items() if k.startswith("x-llmops")})

SNIPPET
fi
exec .venv/bin/honcho --procfile Procfile start --port "$PORT" "${processes[@]}"

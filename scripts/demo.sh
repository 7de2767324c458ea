#!/usr/bin/env bash
# The embedded demo: SQLite, no Redis, the mock upstream on :MOCK_PORT (9100) and the gateway on :PORT (8000).
# seed_demo points the demo provider at MOCK_PORT, on an existing database too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
MOCK_PORT=${MOCK_PORT:-9100}
PORT=${PORT:-8000}

mkdir -p var
$PY manage.py migrate --no-input -v 0
$PY manage.py collectstatic --no-input -v 0
$PY manage.py seed_demo --upstream-url "http://127.0.0.1:${MOCK_PORT}/v1"

$PY manage.py mock_upstream --port "$MOCK_PORT" > var/mock-upstream.log 2>&1 &
MOCK_PID=$!
trap 'kill $MOCK_PID 2>/dev/null || true' EXIT

KEY=$(cat var/demo-api-key)
# /metrics answers only a bearer token: the demo makes one once (var/demo-metrics-token) unless one is set.
[ -s var/demo-metrics-token ] || $PY -c 'import secrets; print(secrets.token_urlsafe(24))' > var/demo-metrics-token
export LLMOPS_METRICS_TOKEN=${LLMOPS_METRICS_TOKEN:-$(cat var/demo-metrics-token)}
cat <<SNIPPET

Gateway: http://127.0.0.1:${PORT}/v1   Admin: http://127.0.0.1:${PORT}/admin/ (login in var/demo-admin-password)
Paste this into .venv/bin/python: routed by the demo policy (model "auto"), then answered from the
exact and the semantic cache (temperature 0 makes a request cacheable):

from openai import OpenAI
client = OpenAI(base_url="http://127.0.0.1:${PORT}/v1", api_key="${KEY}")
for question in ["Summarise our refund policy", "Summarise our refund policy", "Can you summarise our refund policy?"]:
    reply = client.chat.completions.with_raw_response.create(
        model="auto", temperature=0, messages=[{"role": "user", "content": question}])
    print(reply.parse().choices[0].message.content)
    print({k: v for k, v in reply.headers.items() if k.startswith("x-llmops")})

Prometheus metrics: curl -H "Authorization: Bearer ${LLMOPS_METRICS_TOKEN}" http://127.0.0.1:${PORT}/metrics

Press Ctrl+C to stop.
SNIPPET
$PY -m uvicorn llmops.asgi:application --host 127.0.0.1 --port "$PORT" --no-access-log --no-proxy-headers

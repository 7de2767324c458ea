#!/usr/bin/env bash
# Start local PostgreSQL (with pgvector) and Redis when they are not answering (for `make test`, `make serve` and CI).
# With --redis-aof (make serve) a Redis started here persists with AOF (appendonly yes, appendfsync everysec) under
# var/redis, as production runs it; the test suite's stays in memory only.
set -euo pipefail
cd "$(dirname "$0")/.."

redis_persistence=(--save "" --appendonly no)
for arg in "$@"; do
  case $arg in
    --redis-aof) redis_persistence=(--save "" --appendonly yes --appendfsync everysec --dir "$PWD/var/redis") ;;
    *) echo "usage: $0 [--redis-aof]" >&2; exit 2 ;;
  esac
done

# The semantic cache's migration needs pgvector in the server: the checkout's shared folder can build it (idempotent,
# about 10 s the first time, as root).
if [[ -x ../shared/scripts/install-pgvector ]]; then
  ../shared/scripts/install-pgvector
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "PostgreSQL is down; starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "Redis is down; starting it (${redis_persistence[*]})"
  mkdir -p var/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 "${redis_persistence[@]}"
fi
for _ in $(seq 1 30); do
  if pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    exit 0
  fi
  sleep 1
done
echo "PostgreSQL or Redis did not come up on 127.0.0.1" >&2
exit 1

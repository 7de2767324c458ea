"""Each pytest-xdist worker of `make test` gets Redis databases and a database name of its own.

Loaded with ``-p tests.worker_env`` (the Makefile), so it runs before pytest-django makes Django read its settings:
tests flush, count and drain what they find in REDIS_URL's database, the e2e topology drains E2E_REDIS_URL's, and
names its database after DATABASE_URL's. Worker gwN takes the Redis databases two times N below the ones `make test`
names (gw0 keeps them; E2E_REDIS_URL's must be REDIS_URL's minus one, as there, or workers would share one).
pytest-django names each worker's test database apart already. tests/conftest.py refuses xdist workers without it.
"""

import os
from urllib.parse import urlsplit


def _redis_db_below(url: str, offset: int) -> str:
    parts = urlsplit(url)
    database = int(parts.path.lstrip("/") or 0) - offset
    if database < 0:
        raise RuntimeError(f"no Redis database left for this many pytest-xdist workers below {url}")
    return parts._replace(path=f"/{database}").geturl()


def _isolate(worker: str) -> None:
    index = int(worker.removeprefix("gw"))
    for name in ("REDIS_URL", "E2E_REDIS_URL"):
        if os.environ.get(name):
            os.environ[name] = _redis_db_below(os.environ[name], 2 * index)
    database_url = os.environ.get("DATABASE_URL", "")
    if database_url.startswith("postgres"):
        parts = urlsplit(database_url)
        os.environ["DATABASE_URL"] = parts._replace(path=f"{parts.path}_{worker}").geturl()


if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    _isolate(worker)

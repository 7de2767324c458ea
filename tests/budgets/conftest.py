from dataclasses import dataclass

import pytest
import redis
from django.db import connection

from billing.budgets.thresholds import threshold_alerts_wait
from routing.services import tenant_model_access_set
from tenants.models import ApiKey, Team, Tenant
from tenants.services import api_key_create
from tests.factories import ModelFactory, TeamFactory, TenantFactory
from tests.servers import Receiver, ThreadedServer

# Closed on loopback: connecting is refused at once, the way an unreachable Redis fails.
UNREACHABLE_REDIS_URL = "redis://127.0.0.1:1/0"


@dataclass
class Org:
    tenant: Tenant
    team: Team
    other_team: Team
    api_key: ApiKey
    other_key: ApiKey


def make_org(slug: str, *, time_zone: str = "UTC") -> Org:
    tenant = TenantFactory(slug=slug, time_zone=time_zone)
    team = TeamFactory(tenant=tenant, slug=f"{slug}-support")
    other_team = TeamFactory(tenant=tenant, slug=f"{slug}-search")
    api_key, _ = api_key_create(team=team, name=f"{slug}-key")
    other_key, _ = api_key_create(team=other_team, name=f"{slug}-other-key")
    small, large = ModelFactory(name=f"{slug}-small"), ModelFactory(name=f"{slug}-large", output_price_per_million=9)
    tenant_model_access_set(tenant=tenant, allowed_models=[small, large], default_model=small)
    return Org(tenant=tenant, team=team, other_team=other_team, api_key=api_key, other_key=other_key)


@pytest.fixture
def org(db) -> Org:
    return make_org("acme")


@pytest.fixture
def live_org(transactional_db) -> Org:
    """Committed, so the worker threads of the database fallback and the alert enqueuer see it."""
    yield make_org("acme")
    threshold_alerts_wait()
    _close_other_connections()


@pytest.fixture(autouse=True)
def _alert_enqueues_finish():
    """Alerts enqueued in the background by one test must not run into the next."""
    yield
    threshold_alerts_wait()


def _close_other_connections() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture
def redis_counters(settings):
    """The test Redis (REDIS_URL from `make test`), emptied of llmops keys before and after."""
    if not settings.REDIS_URL:
        pytest.fail("these tests need REDIS_URL; run them with `make test`")
    client = redis.Redis.from_url(settings.REDIS_URL)

    def flush():
        keys = list(client.scan_iter("llmops:*"))
        if keys:
            client.delete(*keys)

    flush()
    yield client
    flush()
    client.close()


@pytest.fixture
def no_redis(settings):
    settings.REDIS_URL = ""


@pytest.fixture
def unreachable_redis(settings):
    settings.REDIS_URL = UNREACHABLE_REDIS_URL


@pytest.fixture(scope="session")
def receiver_server():
    with ThreadedServer(Receiver()) as server:
        yield server


@pytest.fixture
def receiver(receiver_server) -> tuple[Receiver, str]:
    app: Receiver = receiver_server.server.config.app
    app.statuses.clear()
    app.received.clear()
    return app, receiver_server.url


@pytest.fixture(autouse=True)
def tasks_run_eagerly(eager_celery):
    """Every test here runs Celery's tasks in the caller (tests/conftest.py's eager_celery)."""

"""Every /api/ view x every role, against the role table: a tenant or a row the caller may not use answers exactly
like one that does not exist (the same status and the same body).

The URL resolver is walked for every route under /api/, so a view without an entry here fails the test.
"""

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import httpx
import pytest
from django.urls import URLResolver, get_resolver, reverse

from billing.budgets.services import budget_create
from billing.models import Budget, UsageExport
from llmops.gateway.batches.models import Job
from llmops.gateway.jobs.services import job_webhook_secret
from tenants.models import Tenant
from tenants.permissions import Action
from tests.security.access import MISSING_ID, ROLES, make_full_world, may, user_with

DAY = date.today().isoformat()
MISSING_SLUG = "no-such-tenant"
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Hello"}]}


def _slug(tenant: Tenant | None) -> str:
    return tenant.slug if tenant else MISSING_SLUG


def _pk(row) -> int:
    return row.pk if row else MISSING_ID


def _budget_of(tenant: Tenant | None):
    return Budget.objects.for_tenant(tenant).order_by("pk").first() if tenant else None


def _export_of(tenant: Tenant | None):
    return UsageExport.objects.for_tenant(tenant).order_by("pk").first() if tenant else None


def _fresh_budget(tenant: Tenant | None):
    """A budget made for the request that deletes it."""
    return budget_create(tenant=tenant, limit_usd=Decimal("1")) if tenant else None


@dataclass(frozen=True)
class ApiCall:
    """One request to a view: `send(client, tenant)` addresses the tenant, or its row, or (None) a missing one."""

    method: str
    action: Action
    send: object
    succeeds_with: int


def _json(method: str):
    def send(client, path: str, data):
        return getattr(client, method)(path, data, content_type="application/json")

    return send


SESSION_VIEWS = {
    "budget-list": [
        ApiCall("GET", Action.EDIT, lambda c, t: c.get(reverse("budget-list"), {"tenant": _slug(t)}), 200),
        ApiCall(
            "POST",
            Action.EDIT,
            lambda c, t: _json("post")(c, f"{reverse('budget-list')}?tenant={_slug(t)}", {"limit_usd": "5"}),
            201,
        ),
    ],
    "budget-detail": [
        ApiCall("GET", Action.EDIT, lambda c, t: c.get(reverse("budget-detail", args=[_pk(_budget_of(t))])), 200),
        ApiCall(
            "PATCH",
            Action.EDIT,
            lambda c, t: _json("patch")(c, reverse("budget-detail", args=[_pk(_budget_of(t))]), {"limit_usd": "7"}),
            200,
        ),
        ApiCall(
            "DELETE", Action.EDIT, lambda c, t: c.delete(reverse("budget-detail", args=[_pk(_fresh_budget(t))])), 204
        ),
    ],
    "usage": [
        ApiCall(
            "GET",
            Action.EXPORT,
            lambda c, t: c.get(reverse("usage"), {"tenant": _slug(t), "since": DAY, "until": DAY}),
            200,
        )
    ],
    "usage-export-csv": [
        ApiCall(
            "GET",
            Action.EXPORT,
            lambda c, t: c.get(reverse("usage-export-csv"), {"tenant": _slug(t), "since": DAY, "until": DAY}),
            200,
        )
    ],
    "usage-customer-statement": [
        ApiCall(
            "GET",
            Action.EXPORT,
            lambda c, t: c.get(
                reverse("usage-customer-statement"),
                {"tenant": _slug(t), "customer": "alice", "since": DAY, "until": DAY},
            ),
            200,
        )
    ],
    "usage-export-create": [
        ApiCall(
            "POST",
            Action.EXPORT,
            lambda c, t: _json("post")(
                c, reverse("usage-export-create"), {"tenant": _slug(t), "since": DAY, "until": DAY}
            ),
            202,
        )
    ],
    "usage-export-status": [
        ApiCall(
            "GET", Action.EXPORT, lambda c, t: c.get(reverse("usage-export-status", args=[_pk(_export_of(t))])), 200
        )
    ],
    "usage-export-download": [
        ApiCall(
            "GET", Action.EXPORT, lambda c, t: c.get(reverse("usage-export-download", args=[_pk(_export_of(t))])), 200
        )
    ],
    "routing:simulate": [
        ApiCall(
            "POST",
            Action.EDIT,
            lambda c, t: _json("post")(c, reverse("routing:simulate"), {"tenant": _slug(t), "request": CHAT}),
            200,
        )
    ],
}
# The gateway's own views under /api/: a tenant's key, never a session, is what they answer to (test below).
KEY_VIEWS = {"jobs:jobs", "jobs:webhook-secret", "jobs:job-detail"}
# The API's description, the same for everyone, with no tenant data in it.
PUBLIC_VIEWS = {"schema", "schema-docs", "schema-redoc"}


def _api_views(patterns=None, prefix: str = "", namespace: str = "") -> set[str]:
    names = set()
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            inner = ":".join(part for part in (namespace, pattern.namespace) if part)
            names |= _api_views(pattern.url_patterns, route, inner)
        elif route.startswith("api/"):
            name = pattern.name or route
            names.add(f"{namespace}:{name}" if namespace else name)
    return names


def test_every_api_view_is_in_the_matrix():
    assert _api_views() == set(SESSION_VIEWS) | KEY_VIEWS | PUBLIC_VIEWS


def _outcome(response) -> tuple:
    """What an answer tells its caller: its status and its body, when the body is JSON."""
    is_json = response.get("Content-Type", "").startswith("application/json")
    return response.status_code, response.json() if is_json else response.get("Content-Type")


@pytest.fixture
def world(db, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return make_full_world()


@pytest.mark.parametrize("role", ROLES)
def test_every_api_view_answers_each_role_as_the_role_table_says(client, world, role):
    client.force_login(user_with(role, world))
    actual, expected = {}, {}
    for name, calls in SESSION_VIEWS.items():
        for call in calls:
            for tenant in (world.acme.tenant, world.globex.tenant):
                allowed = may(role, call.action, tenant, world)
                response = call.send(client, tenant)
                key = f"{call.method} {name} {tenant.slug}"
                if response.status_code == call.succeeds_with:
                    actual[key] = "ok" if allowed else f"served to a role that may not: {_outcome(response)}"
                elif _outcome(response) != _outcome(missing := call.send(client, None)):
                    actual[key] = f"told apart from a missing one: {_outcome(response)} vs {_outcome(missing)}"
                else:
                    actual[key] = f"refused {response.status_code}"
                expected[key] = "ok" if allowed else "refused 404"
    for name in sorted(KEY_VIEWS):
        path = reverse(name, args=["job_missing"]) if name == "jobs:job-detail" else reverse(name)
        actual[f"GET {name}"] = client.get(path).status_code
        expected[f"GET {name}"] = 401
    for name in sorted(PUBLIC_VIEWS):
        actual[f"GET {name}"] = client.get(reverse(name)).status_code
        expected[f"GET {name}"] = 200

    assert actual == expected


def test_the_gateways_api_views_answer_each_key_for_its_own_tenant_only(gateway, acme, globex):
    """/api/jobs answers to tenant keys, not sessions: a job of another tenant answers like a missing one, and each
    key gets its own tenant's webhook secret."""
    job = Job.objects.create(tenant=acme.tenant, team=acme.team, api_key=acme.api_key, body=CHAT)

    def get(key: str, path: str) -> httpx.Response:
        return httpx.get(f"{gateway.url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=10)

    def shown(response: httpx.Response, job_id: str) -> tuple:
        return response.status_code, response.text.replace(job_id, "<id>")

    own = get(acme.key, f"/api/jobs/{job.id}")
    others = get(globex.key, f"/api/jobs/{job.id}")
    missing = get(globex.key, "/api/jobs/job_missing")
    secrets = {
        setup.tenant.slug: get(setup.key, "/api/jobs/webhook-secret").json()["secret"] for setup in (acme, globex)
    }

    assert own.status_code == 200 and own.json()["id"] == job.id
    assert others.status_code == 404
    assert shown(others, job.id) == shown(missing, "job_missing")
    assert secrets == {
        "acme": job_webhook_secret(tenant_id=acme.tenant.pk),
        "globex": job_webhook_secret(tenant_id=globex.tenant.pk),
    }

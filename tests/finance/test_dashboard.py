import math
import re
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.ledger.selectors import tenant_zone
from billing.models import UsageKind, UsageRecord
from billing.models.rollups import LATENCY_BUCKET_EDGES_MS
from tenants.models import Tenant
from tests.factories import UserFactory
from tests.finance.conftest import make_finance_tenant, usage_row

KPI = re.compile(r'id="kpi-([\w-]+)"><span class="label">[^<]*</span><span class="value">([^<]*)</span>')


def dashboard_kpis(client, **params) -> dict[str, str]:
    response = client.get(reverse("admin:billing_usage_dashboard"), params)
    assert response.status_code == 200
    return dict(KPI.findall(response.content.decode()))


def local_today(tenant) -> date:
    return timezone.now().astimezone(tenant_zone(tenant=tenant)).date()


def requests_on(tenant, day: date) -> int:
    zone = tenant_zone(tenant=tenant)
    start = datetime.combine(day, time.min, tzinfo=zone)
    end = start + timedelta(days=1)
    rows = UsageRecord.objects.unscoped().filter(tenant=tenant, created_at__gte=start, created_at__lt=end)
    return rows.exclude(kind="evaluation").count()  # the seeded shadow evaluations' calls are not requests


def latency_bucket(latency_ms: float) -> int:
    return next((index for index, edge in enumerate(LATENCY_BUCKET_EDGES_MS) if latency_ms <= edge), 99)


def test_dashboard_kpis_match_the_ledger(client, seeded):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    zone = tenant_zone(tenant=seeded.tenant)
    today = timezone.now().astimezone(zone).date()
    since, until = today - timedelta(days=6), today - timedelta(days=1)
    team = seeded.teams[1]
    kpis = dashboard_kpis(client, tenant=seeded.tenant.pk, since=since, until=until, team=team.pk)

    records = [
        record
        # Product traffic: the seeded shadow evaluations' calls are the evaluation spend, in no KPI.
        for record in UsageRecord.objects.unscoped().filter(tenant=seeded.tenant, team=team).exclude(kind="evaluation")
        if since <= record.created_at.astimezone(zone).date() <= until
    ]
    count = len(records)
    assert count > 500
    cost = sum((record.cost_usd for record in records), Decimal(0))
    hits = sum(record.cache_status in ("hit-exact", "hit-semantic") for record in records)
    assert any(record.routed_to_large for record in records)
    errors = sum(record.http_status >= 400 for record in records)
    latencies = sorted(record.total_latency_ms for record in records)
    exact_p95 = latencies[math.ceil(0.95 * count) - 1]

    assert kpis["requests"] == str(count)
    assert kpis["spend"] == f"{cost.quantize(Decimal('0.01'), rounding=ROUND_HALF_EVEN):f}"
    assert kpis["cost-per-1k"] == f"{(cost * 1000 / count).quantize(Decimal('0.0001'), rounding=ROUND_HALF_EVEN):f}"
    assert kpis["avg-prompt"] == f"{sum(r.prompt_tokens for r in records) / count:.1f}"
    assert kpis["avg-completion"] == f"{sum(r.completion_tokens for r in records) / count:.1f}"
    assert kpis["cache-hit-rate"] == f"{hits / count * 100:.1f} %"
    assert kpis["error-rate"] == f"{errors / count * 100:.1f} %"
    assert kpis["routed-large"] == f"{sum(r.routed_to_large for r in records) / count * 100:.1f} %"
    assert latency_bucket(float(kpis["p95"])) == latency_bucket(exact_p95)


def test_dashboard_page_loads_chart_library_from_local_static_files(client, seeded):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = client.get(reverse("admin:billing_usage_dashboard"), {"tenant": seeded.tenant.pk}).content.decode()
    assert "/static/vendor/chartjs/chart.umd.min.js" in page
    assert 'id="dashboard-data"' in page
    assert "cdn" not in page.lower() and "https://" not in page


def test_staff_member_sees_only_their_tenants_dashboard(client, seeded):
    other = make_finance_tenant("other-co")
    client.force_login(other.finance_user)
    assert client.get(reverse("admin:billing_usage_dashboard"), {"tenant": seeded.tenant.pk}).status_code == 404
    own = client.get(reverse("admin:billing_usage_dashboard")).content.decode()
    assert "other-co" in own.lower() or "Other-Co" in own
    assert "seeded" not in own.lower()


def test_a_tenant_with_an_unknown_time_zone_breaks_no_other_tenants_dashboard(client, acme, globex):
    # Stored past the field's validation (written before it, or by .update()); opening a dashboard folds every
    # tenant's new rows into the rollups, the bad zone's included.
    Tenant.objects.unscoped().filter(pk=globex.tenant.pk).update(time_zone="Europe/Londn")
    noon = datetime(2025, 3, 3, 12, tzinfo=UTC)
    UsageRecord.objects.bulk_create([usage_row(key, created_at=noon) for key in (globex.keys[0], *acme.keys)])
    client.force_login(acme.finance_user)

    kpis = dashboard_kpis(client, tenant=acme.tenant.pk, since=noon.date(), until=noon.date())

    assert kpis["requests"] == "2"


def test_another_tenants_team_is_refused(client, seeded):
    other = make_finance_tenant("other-co")
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    response = client.get(
        reverse("admin:billing_usage_dashboard"), {"tenant": seeded.tenant.pk, "team": other.teams[0].pk}
    )
    assert response.status_code == 404


@pytest.mark.parametrize(
    "days",
    [{"since": "0001-01-01", "until": "9999-12-31"}, {"until": "9999-12-31"}, {"since": "1969-12-31"}],
)
def test_days_past_the_exports_range_are_refused_not_a_server_error(client, seeded, days):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    refused = client.get(reverse("admin:billing_usage_dashboard"), {"tenant": seeded.tenant.pk, **days})

    assert refused.status_code == 400
    assert set(days) == {name for name in ("since", "until") if f"{name}:" in refused.content.decode()}


def test_a_dashboard_longer_than_an_export_is_refused(client, seeded):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    url = reverse("admin:billing_usage_dashboard")

    refused = client.get(url, {"tenant": seeded.tenant.pk, "since": "1970-01-01", "until": "9998-12-31"})
    earliest = client.get(url, {"tenant": seeded.tenant.pk, "until": "1970-01-01"})

    assert refused.status_code == 400 and b"at most" in refused.content
    assert earliest.status_code == 200


@pytest.mark.parametrize("name", ["admin:billing_usage_export", "admin:billing_usage_statement"])
def test_finance_pages_show_nothing_of_another_tenant(client, seeded, name):
    other = make_finance_tenant("other-co")
    client.force_login(other.finance_user)
    page = client.get(reverse(name)).content.decode()
    assert "seeded" not in page.lower()
    if name.endswith("statement"):
        assert client.get(reverse(name), {"tenant": "seeded"}).status_code == 404
    else:
        refused = client.post(reverse(name), {"tenant": seeded.tenant.pk, "since": "2025-01-01", "until": "2025-01-02"})
        assert refused.status_code == 200
        assert "Select a valid choice" in refused.content.decode()


def test_dashboard_shows_each_budget_with_its_spend_in_the_current_period(client, seeded):
    from billing.budgets.services import budget_create

    budget = budget_create(
        tenant=seeded.tenant, scope="team", team=seeded.teams[0], period="month", limit_usd=Decimal("123.45")
    )
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    zone = tenant_zone(tenant=seeded.tenant)
    now = timezone.now().astimezone(zone)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    spent = sum(
        (
            r.cost_usd
            # A budget counts product spend: the seeded shadow evaluations' calls are the evaluation budget's.
            for r in UsageRecord.objects.unscoped()
            .filter(tenant=seeded.tenant, team=seeded.teams[0], created_at__gte=month_start)
            .exclude(kind=UsageKind.EVALUATION)
        ),
        Decimal(0),
    )

    html = client.get(reverse("admin:billing_usage_dashboard"), {"tenant": seeded.tenant.pk}).content.decode()

    assert str(budget) in html and "123.45" in html
    assert f"{spent.quantize(Decimal('0.01'), rounding=ROUND_HALF_EVEN):f}" in html


def test_rollups_missing_a_row_older_than_a_minute_are_refreshed_when_the_dashboard_opens(client, seeded):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    today = local_today(seeded.tenant)
    page = {"tenant": seeded.tenant.pk, "since": today, "until": today}
    dashboard_kpis(client, **page)
    now = timezone.now()
    UsageRecord.objects.bulk_create([usage_row(seeded.keys[0], created_at=now - timedelta(seconds=30)) for _ in "abc"])
    within_a_minute = dashboard_kpis(client, **page)

    UsageRecord.objects.bulk_create([usage_row(seeded.keys[1], created_at=now - timedelta(seconds=61))])
    after_a_minute = dashboard_kpis(client, **page)

    assert within_a_minute["requests"] == str(requests_on(seeded.tenant, today) - 4)
    assert after_a_minute["requests"] == str(requests_on(seeded.tenant, today))


def test_with_no_maximum_age_every_open_folds_in_new_rows(client, seeded, settings):
    settings.LLMOPS_ROLLUPS_MAX_AGE_SECONDS = 0
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    today = local_today(seeded.tenant)
    for offset in range(1, 3):
        row = usage_row(seeded.keys[1], created_at=timezone.now() - timedelta(seconds=offset))
        UsageRecord.objects.bulk_create([row])
        kpis = dashboard_kpis(client, tenant=seeded.tenant.pk, since=today, until=today)
        assert kpis["requests"] == str(requests_on(seeded.tenant, today))

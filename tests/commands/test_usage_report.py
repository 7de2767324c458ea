import csv
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.models import UsageRecord
from tenants.services import api_key_create
from tests.factories import TeamFactory, TenantFactory

PERIOD = ("--since", "2024-03-10", "--until", "2024-03-12")


@dataclass(frozen=True)
class Usage:
    team: str
    served_model: str
    created_at: datetime
    http_status: int = 200
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    berlin_day: str = ""  # the day in Europe/Berlin (UTC+1 in March 2024); empty when outside the period

    @property
    def routed_to_large(self) -> bool:
        """In this ledger, the policy (v2) sent every large-model request there."""
        return self.served_model.endswith("-large")

    @property
    def policy_version(self) -> int | None:
        return 2 if self.routed_to_large else (1 if self.served_model else None)


def utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, 3, day, hour, minute, tzinfo=UTC)


ACME_USAGE = [
    Usage("support", "acme-small", utc(9, 22, 30), cost_usd=Decimal("9.9999999999")),  # 23:30 on the 9th in Berlin
    Usage("support", "acme-small", utc(9, 23, 30), 200, 1200, 200, 300, Decimal("0.0000012345"), "2024-03-10"),
    Usage("analytics", "acme-large", utc(10, 12), 200, 5000, 0, 1000, Decimal("0.1234567891"), "2024-03-10"),
    Usage("support", "acme-large", utc(10, 23, 30), 200, 10, 5, 1, Decimal("0.0000000001"), "2024-03-11"),
    Usage("support", "", utc(11, 9), 429, berlin_day="2024-03-11"),
    Usage("analytics", "acme-small", utc(12, 22, 30), 502, 700, 0, 0, Decimal("0.0000000003"), "2024-03-12"),
    Usage("analytics", "acme-small", utc(12, 23, 30), cost_usd=Decimal("7.7777777777")),  # 00:30 on the 13th in Berlin
]
ACME_IN_PERIOD = [usage for usage in ACME_USAGE if usage.berlin_day]
GLOBEX_USAGE = [
    Usage("globex-research", "globex-secret-model", utc(day, 12), 500, 99, 9, 99, Decimal("5.0000000007"))
    for day in (10, 11, 12)
]


def record_usage(tenant, keys_by_team, usage: Usage) -> UsageRecord:
    api_key = keys_by_team[usage.team]
    return UsageRecord.objects.create(
        request_id=uuid.uuid4().hex,
        tenant=tenant,
        team=api_key.team,
        api_key=api_key,
        requested_model=usage.served_model or "unknown",
        served_model=usage.served_model,
        prompt_tokens=usage.prompt_tokens,
        cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens,
        cost_usd=usage.cost_usd,
        http_status=usage.http_status,
        created_at=usage.created_at,
        routed_to_large=usage.routed_to_large,
        policy_version=usage.policy_version,
    )


def tenant_with_keys(slug: str, time_zone: str, team_slugs: set[str]):
    tenant = TenantFactory(slug=slug, time_zone=time_zone)
    keys_by_team = {
        team_slug: api_key_create(team=TeamFactory(tenant=tenant, slug=team_slug))[0] for team_slug in team_slugs
    }
    return tenant, keys_by_team


@pytest.fixture
def acme_keys(db):
    tenant, keys_by_team = tenant_with_keys("acme", "Europe/Berlin", {usage.team for usage in ACME_USAGE})
    for usage in ACME_USAGE:
        record_usage(tenant, keys_by_team, usage)
    return keys_by_team


@pytest.fixture
def globex_key(db):
    tenant, keys_by_team = tenant_with_keys("globex", "UTC", {"globex-research"})
    for usage in GLOBEX_USAGE:
        record_usage(tenant, keys_by_team, usage)
    return keys_by_team["globex-research"]


def run_usage_report(*args: str) -> str:
    stdout = StringIO()
    call_command("usage_report", *args, stdout=stdout)
    return stdout.getvalue()


def csv_report(*args: str) -> dict[str, dict[str, str]]:
    rows = list(csv.DictReader(StringIO(run_usage_report(*args, "--format", "csv"))))
    group_column = args[args.index("--group-by") + 1]
    return {row.pop(group_column): row for row in rows}


def expected_report(label_of) -> dict[str, dict[str, str]]:
    """The report worked out here, in Python, from the usage the test wrote."""
    expected = {}
    for usage in ACME_IN_PERIOD:
        row = expected.setdefault(label_of(usage), {"usages": []})
        row["usages"].append(usage)
    expected["TOTAL"] = {"usages": ACME_IN_PERIOD}
    return {label: summarise(row["usages"]) for label, row in expected.items()}


def summarise(usages: list[Usage]) -> dict[str, str]:
    return {
        "requests": str(len(usages)),
        "errors": str(sum(usage.http_status >= 400 for usage in usages)),
        "prompt_tokens": str(sum(usage.prompt_tokens for usage in usages)),
        "cached_tokens": str(sum(usage.cached_tokens for usage in usages)),
        "completion_tokens": str(sum(usage.completion_tokens for usage in usages)),
        "cost_usd": f"{sum((usage.cost_usd for usage in usages), Decimal(0)):.10f}",
        "routed_to_large": str(sum(usage.routed_to_large for usage in usages)),
        "routed_to_large_percent": f"{Decimal(100) * sum(u.routed_to_large for u in usages) / (len(usages) or 1):.1f}",
    }


def test_by_policy_version_shows_the_routed_to_large_share(acme_keys, globex_key):
    def version_label(usage):
        return f"v{usage.policy_version}" if usage.policy_version else "(no policy)"

    report = csv_report("--tenant", "acme", *PERIOD, "--group-by", "policy")

    assert report == expected_report(version_label)
    assert report["v2"]["routed_to_large_percent"] == "100.0"
    assert report["TOTAL"]["routed_to_large_percent"] == "40.0"


def test_by_team(acme_keys, globex_key):
    assert csv_report("--tenant", "acme", *PERIOD, "--group-by", "team") == expected_report(lambda usage: usage.team)


def test_by_served_model_shows_a_missing_model_as_none(acme_keys, globex_key):
    report = csv_report("--tenant", "acme", *PERIOD, "--group-by", "model")

    assert report == expected_report(lambda usage: usage.served_model or "(none)")
    assert report["(none)"]["errors"] == "1"


def test_by_key_shows_the_key_prefix(acme_keys, globex_key):
    report = csv_report("--tenant", "acme", *PERIOD, "--group-by", "key")

    assert report == expected_report(lambda usage: acme_keys[usage.team].prefix)


def test_by_day_counts_days_in_the_tenant_time_zone(acme_keys, globex_key):
    report = csv_report("--tenant", "acme", *PERIOD, "--group-by", "day")

    assert report == expected_report(lambda usage: usage.berlin_day)
    assert {day: row["requests"] for day, row in report.items()} == {
        "2024-03-10": "2",
        "2024-03-11": "2",
        "2024-03-12": "1",
        "TOTAL": "5",
    }


def test_the_period_is_whole_days_in_the_tenant_time_zone(acme_keys):
    """The 23:30 UTC rows on the 9th and 12th are on the 10th and 13th in Berlin: only the first is in the period."""
    report = csv_report("--tenant", "acme", "--since", "2024-03-10", "--until", "2024-03-10", "--group-by", "day")

    assert list(report) == ["2024-03-10", "TOTAL"]
    assert report["TOTAL"]["cost_usd"] == "0.1234580236"


def test_total_is_the_exact_ledger_sum(acme_keys, globex_key):
    ledger_sum = sum((usage.cost_usd for usage in ACME_IN_PERIOD), Decimal(0))

    table = run_usage_report("--tenant", "acme", *PERIOD, "--group-by", "model")

    lines = [line.split() for line in table.splitlines()]
    header = next(line for line in lines if line and line[0] == "model")
    total = dict(zip(header, lines[-1], strict=True))
    assert total["model"] == "TOTAL"
    assert Decimal(total["cost_usd"]) == ledger_sum
    assert total["cost_usd"] == "0.1234580240"


def test_json_gives_decimal_strings_that_add_up(acme_keys, globex_key):
    report = json.loads(run_usage_report("--tenant", "acme", *PERIOD, "--group-by", "team", "--format", "json"))

    assert (report["tenant"], report["time_zone"], report["since"], report["until"]) == (
        "acme",
        "Europe/Berlin",
        "2024-03-10",
        "2024-03-12",
    )
    costs = {row["group"]: row["cost_usd"] for row in report["rows"]}
    assert costs == {"analytics": "0.1234567894", "support": "0.0000012346"}
    assert sum(map(Decimal, costs.values())) == Decimal(report["total"]["cost_usd"])
    assert report["total"]["requests"] == 5
    assert report["total"]["errors"] == 2


@pytest.mark.parametrize("group_by", ["team", "model", "key", "day"])
@pytest.mark.parametrize("output_format", ["table", "csv", "json"])
def test_another_tenants_usage_never_appears(acme_keys, globex_key, group_by, output_format):
    output = run_usage_report("--tenant", "acme", *PERIOD, "--group-by", group_by, "--format", output_format)

    assert "globex" not in output
    assert globex_key.prefix not in output
    assert "5.0000000007" not in output


def test_defaults_to_the_last_30_days(db):
    tenant, keys_by_team = tenant_with_keys("initech", "UTC", {"ops"})
    now = timezone.now()
    for days_ago in (0, 28, 31, 40):
        record_usage(tenant, keys_by_team, Usage("ops", "m", now - timedelta(days=days_ago), cost_usd=Decimal(1)))

    report = csv_report("--tenant", "initech", "--group-by", "team")

    assert report["ops"]["requests"] == "2"


def test_a_tenant_without_usage_reports_a_zero_total(acme_keys):
    report = csv_report("--tenant", "acme", "--since", "2020-01-01", "--until", "2020-01-31", "--group-by", "team")

    assert report == {"TOTAL": summarise([])}
    assert report["TOTAL"]["cost_usd"] == "0.0000000000"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tenant", "initech", "--group-by", "team"), "no tenant with slug 'initech'"),
        (("--tenant", "acme", "--since", "2024-02-30", "--group-by", "team"), "not a date in the form YYYY-MM-DD"),
        (("--tenant", "acme", "--until", "12/03/2024", "--group-by", "team"), "not a date in the form YYYY-MM-DD"),
        (("--tenant", "acme", "--since", "2024-03-12", "--until", "2024-03-10", "--group-by", "team"), "is after"),
        (("--tenant", "acme", "--group-by", "week"), "invalid choice: 'week'"),
    ],
)
def test_refuses_bad_arguments(acme_keys, args, message):
    with pytest.raises(CommandError, match=message):
        run_usage_report(*args)


def test_refuses_a_tenant_with_an_unknown_time_zone(db):
    TenantFactory(slug="atlantis", time_zone="Atlantis/Capital")

    with pytest.raises(CommandError, match="unknown time zone 'Atlantis/Capital'"):
        run_usage_report("--tenant", "atlantis", "--group-by", "day")

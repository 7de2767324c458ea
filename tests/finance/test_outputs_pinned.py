"""What finance's customers read, pinned to the byte for one small fixed ledger.

The CSV exports, the usage API, the statement and the usage report are read by customers' scripts and spreadsheets:
a column renamed, reordered or formatted otherwise breaks them. These answers were taken from the code before the
ledger's columns got one definition (billing/ledger/columns.py), so any later change to them shows here. Columns
added since are appended at the end (`cache_write_tokens`, the levers' `saved_*_usd`, `customer`), which leaves every
earlier column where scripts read it.
"""

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.urls import reverse

from billing.budgets.services import budget_create
from billing.finance.exports import export_params_parse, usage_export_chunks
from billing.finance.statements import statement_build, statement_csv
from billing.models import UsageKind, UsageRecord
from tenants.models import ApiKey, Role
from tenants.services import membership_set
from tests.factories import TeamFactory, TenantFactory, UserFactory


def _key(team, prefix: str) -> ApiKey:
    return ApiKey.objects.create(tenant=team.tenant, team=team, prefix=prefix, secret_hash="0" * 64)


def _row(key: ApiKey, request_id: str, created_at: datetime, **fields) -> UsageRecord:
    return UsageRecord(
        request_id=request_id,
        tenant_id=key.tenant_id,
        team_id=key.team_id,
        api_key=key,
        created_at=created_at,
        **fields,
    )


@pytest.fixture
def pinned(db):
    """A tenant in New York (UTC-5 in early March) with a few requests of every kind, and a neighbour tenant."""
    tenant = TenantFactory(slug="pin", time_zone="America/New_York")
    search, support = TeamFactory(tenant=tenant, slug="search"), TeamFactory(tenant=tenant, slug="support")
    key_a, key_b = _key(search, "sk-pinA"), _key(support, "sk-pinB")
    other = _key(TeamFactory(tenant=TenantFactory(slug="other"), slug="other-team"), "sk-other")
    UsageRecord.objects.bulk_create(
        [
            # 2025-02-28 23:59 in New York: before the range.
            _row(key_a, "req-early", datetime(2025, 3, 1, 4, 59, tzinfo=UTC), http_status=200, cost_usd=Decimal(1)),
            _row(
                key_a,
                "req-1",
                datetime(2025, 3, 3, 14, 0, 0, 123456, tzinfo=UTC),
                requested_model="auto",
                served_model="gpt-small",
                is_stream=True,
                prompt_tokens=100,
                cached_tokens=20,
                completion_tokens=30,
                cost_usd=Decimal("0.0012345678"),
                upstream_latency_ms=120,
                total_latency_ms=150,
                route="cheap-first",
                policy_version=3,
                tags=["checkout", "eu"],
                customer="cust-7",
                saved_routing_usd=Decimal("0.0100000000"),
                cache_write_tokens=50,
                saved_provider_cache_usd=Decimal("0.0000123000"),
                http_status=200,
            ),
            _row(
                key_b,
                "req-2",
                datetime(2025, 3, 3, 16, 30, tzinfo=UTC),
                requested_model="=cmd|' /C calc'!A0",
                total_latency_ms=3,
                cache_status="bypass",
                http_status=400,
                error_code="invalid_request",
            ),
            # 2025-03-03 22:30 in New York, 2025-03-04 in UTC.
            _row(
                key_a,
                "req-3",
                datetime(2025, 3, 4, 3, 30, tzinfo=UTC),
                requested_model="auto",
                served_model="gpt-large",
                prompt_tokens=2000,
                completion_tokens=500,
                cost_usd=Decimal("0.0250000000"),
                upstream_latency_ms=900,
                total_latency_ms=950,
                routed_to_large=True,
                policy_version=3,
                prompt_tokens_before_compression=3000,
                prompt_tokens_after_compression=2000,
                saved_compression_usd=Decimal("0.0024500000"),
                cache_write_tokens=100,
                saved_provider_cache_usd=Decimal("-0.0000040000"),
                http_status=200,
            ),
            _row(
                key_a,
                "req-3-summary",
                datetime(2025, 3, 4, 3, 30, 1, tzinfo=UTC),
                kind=UsageKind.COMPRESSION_SUMMARY,
                parent_request_id="req-3",
                served_model="gpt-small",
                prompt_tokens=3000,
                completion_tokens=200,
                cost_usd=Decimal("0.0000500000"),
                upstream_latency_ms=400,
                total_latency_ms=410,
                http_status=200,
            ),
            _row(
                key_b,
                "req-4",
                datetime(2025, 3, 4, 15, 0, tzinfo=UTC),
                requested_model="gpt-large",
                served_model="gpt-large",
                prompt_tokens=40,
                completion_tokens=0,
                usage_estimated=True,
                cost_usd=Decimal("0.0150000000"),
                upstream_latency_ms=30000,
                total_latency_ms=30010,
                cache_status="hit-exact",
                attempts=3,
                tags=["search"],
                saved_cache_usd=Decimal("0.0200000000"),
                saved_batch_usd=Decimal("0.0005000000"),
                http_status=502,
                error_code="upstream_error",
            ),
            # 2025-03-05 01:00 in New York: after the range.
            _row(key_b, "req-late", datetime(2025, 3, 5, 6, 0, tzinfo=UTC), http_status=200, cost_usd=Decimal(2)),
            _row(other, "req-other", datetime(2025, 3, 3, 14, 0, tzinfo=UTC), http_status=200, cost_usd=Decimal(9)),
        ]
    )
    budget_create(tenant=tenant, limit_usd=Decimal("50"), period="month")
    finance = UserFactory(username="pin-finance", is_staff=True)
    membership_set(tenant=tenant, user=finance, role=Role.FINANCE)
    tenant.finance_user = finance
    return tenant


PER_REQUEST_CSV = (
    "request_id,created_at,team,api_key_prefix,endpoint,requested_model,served_model,is_stream,prompt_tokens,"
    "cached_tokens,completion_tokens,usage_estimated,cost_usd,cost_usd_rounded,upstream_latency_ms,total_latency_ms,"
    "cache_status,routed_to_large,http_status,error_code,kind,parent_request_id,cache_write_tokens,saved_cache_usd,"
    "saved_routing_usd,saved_compression_usd,saved_batch_usd,saved_provider_cache_usd,customer\r\n"
    "req-1,2025-03-03T09:00:00.123456-05:00,search,sk-pinA,/v1/chat/completions,auto,gpt-small,True,100,20,30,False,"
    "0.0012345678,0.00,120,150,miss,False,200,,request,,50,0.0000000000,0.0100000000,0.0000000000,0.0000000000,"
    "0.0000123000,cust-7\r\n"
    "req-2,2025-03-03T11:30:00-05:00,support,sk-pinB,/v1/chat/completions,'=cmd|' /C calc'!A0,,False,0,0,0,False,"
    "0.0000000000,0.00,,3,bypass,False,400,invalid_request,request,,0,0.0000000000,0.0000000000,0.0000000000,"
    "0.0000000000,0.0000000000,\r\n"
    "req-3,2025-03-03T22:30:00-05:00,search,sk-pinA,/v1/chat/completions,auto,gpt-large,False,2000,0,500,False,"
    "0.0250000000,0.02,900,950,miss,True,200,,request,,100,0.0000000000,0.0000000000,0.0024500000,0.0000000000,"
    "-0.0000040000,\r\n"
    "req-3-summary,2025-03-03T22:30:01-05:00,search,sk-pinA,/v1/chat/completions,,gpt-small,False,3000,0,200,False,"
    "0.0000500000,0.00,400,410,miss,False,200,,compression_summary,req-3,0,0.0000000000,0.0000000000,"
    "0.0000000000,0.0000000000,0.0000000000,\r\n"
    "req-4,2025-03-04T10:00:00-05:00,support,sk-pinB,/v1/chat/completions,gpt-large,gpt-large,False,40,0,0,True,"
    "0.0150000000,0.02,30000,30010,hit-exact,False,502,upstream_error,request,,0,0.0200000000,0.0000000000,"
    "0.0000000000,0.0005000000,0.0000000000,\r\n"
)

GROUPED_CSV = (
    "day,team,key,model,tag,requests,errors,prompt_tokens,cached_tokens,completion_tokens,cost_usd,cost_usd_rounded,"
    "cache_write_tokens,saved_cache_usd,saved_routing_usd,saved_compression_usd,saved_batch_usd,"
    "saved_provider_cache_usd\r\n"
    "2025-03-03,search,sk-pinA,gpt-large,(untagged),1,0,2000,0,500,0.0250000000,0.02,100,0.0000000000,0.0000000000,"
    "0.0024500000,0.0000000000,-0.0000040000\r\n"
    "2025-03-03,search,sk-pinA,gpt-small,(untagged),0,0,3000,0,200,0.0000500000,0.00,0,0.0000000000,0.0000000000,"
    "0.0000000000,0.0000000000,0.0000000000\r\n"
    "2025-03-03,search,sk-pinA,gpt-small,checkout+eu,1,0,100,20,30,0.0012345678,0.00,50,0.0000000000,0.0100000000,"
    "0.0000000000,0.0000000000,0.0000123000\r\n"
    "2025-03-03,support,sk-pinB,(none),(untagged),1,1,0,0,0,0.0000000000,0.00,0,0.0000000000,0.0000000000,"
    "0.0000000000,0.0000000000,0.0000000000\r\n"
    "2025-03-04,support,sk-pinB,gpt-large,search,1,1,40,0,0,0.0150000000,0.02,0,0.0200000000,0.0000000000,"
    "0.0000000000,0.0005000000,0.0000000000\r\n"
)

BY_MODEL_CSV = (
    "model,requests,errors,prompt_tokens,cached_tokens,completion_tokens,cost_usd,cost_usd_rounded,cache_write_tokens,"
    "saved_cache_usd,saved_routing_usd,saved_compression_usd,saved_batch_usd,saved_provider_cache_usd\r\n"
    "(none),1,1,0,0,0,0.0000000000,0.00,0,0.0000000000,0.0000000000,0.0000000000,0.0000000000,0.0000000000\r\n"
    "gpt-large,2,1,2040,0,500,0.0400000000,0.04,100,0.0200000000,0.0000000000,0.0024500000,0.0005000000,"
    "-0.0000040000\r\n"
    "gpt-small,1,0,3100,20,230,0.0012845678,0.00,50,0.0000000000,0.0100000000,0.0000000000,0.0000000000,"
    "0.0000123000\r\n"
)


def _export(tenant, group_by: str) -> bytes:
    params = export_params_parse(since="2025-03-01", until="2025-03-04", group_by=group_by)
    return b"".join(usage_export_chunks(tenant=tenant, params=params))


def test_per_request_csv_is_unchanged(pinned):
    assert _export(pinned, "") == PER_REQUEST_CSV.encode()


def test_grouped_csvs_are_unchanged(pinned):
    assert _export(pinned, "day,team,key,model,tag") == GROUPED_CSV.encode()
    assert _export(pinned, "model") == BY_MODEL_CSV.encode()


def test_api_csv_export_and_admin_action_write_the_same_bytes(client, admin_user, pinned):
    client.force_login(pinned.finance_user)
    response = client.get("/api/usage/export.csv", {"tenant": "pin", "since": "2025-03-01", "until": "2025-03-04"})
    assert b"".join(response.streaming_content) == PER_REQUEST_CSV.encode()
    grouped = client.get(
        "/api/usage/export.csv", {"tenant": "pin", "since": "2025-03-01", "until": "2025-03-04", "group_by": "model"}
    )
    assert b"".join(grouped.streaming_content) == BY_MODEL_CSV.encode()

    client.force_login(admin_user)
    selected = UsageRecord.objects.for_tenant(pinned).filter(
        request_id__in=["req-1", "req-2", "req-3", "req-3-summary"]
    )
    action = client.post(
        reverse("admin:billing_usagerecord_changelist"),
        {"action": "export_selected_csv", "_selected_action": [record.pk for record in selected]},
    )
    assert b"".join(action.streaming_content) == PER_REQUEST_CSV.encode()[: PER_REQUEST_CSV.index("req-4,")]


PER_REQUEST_FIELDS = (
    "request_id",
    "created_at",
    "team",
    "api_key_prefix",
    "endpoint",
    "requested_model",
    "served_model",
    "is_stream",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "usage_estimated",
    "cost_usd",
    "upstream_latency_ms",
    "total_latency_ms",
    "cache_status",
    "routed_to_large",
    "http_status",
    "error_code",
    "kind",
    "parent_request_id",
    "cache_write_tokens",
    "saved_cache_usd",
    "saved_routing_usd",
    "saved_compression_usd",
    "saved_batch_usd",
    "saved_provider_cache_usd",
    "customer",
)
# Newest first, as the API pages them.
PER_REQUEST_JSON = [
    dict(zip(PER_REQUEST_FIELDS, values, strict=True))
    for values in (
        (
            "req-4",
            "2025-03-04T15:00:00Z",
            "support",
            "sk-pinB",
            "/v1/chat/completions",
            "gpt-large",
            "gpt-large",
            False,
            40,
            0,
            0,
            True,
            "0.0150000000",
            30000,
            30010,
            "hit-exact",
            False,
            502,
            "upstream_error",
            "request",
            "",
            0,
            "0.0200000000",
            "0.0000000000",
            "0.0000000000",
            "0.0005000000",
            "0.0000000000",
            "",
        ),
        (
            "req-3-summary",
            "2025-03-04T03:30:01Z",
            "search",
            "sk-pinA",
            "/v1/chat/completions",
            "",
            "gpt-small",
            False,
            3000,
            0,
            200,
            False,
            "0.0000500000",
            400,
            410,
            "miss",
            False,
            200,
            "",
            "compression_summary",
            "req-3",
            0,
            "0.0000000000",
            "0.0000000000",
            "0.0000000000",
            "0.0000000000",
            "0.0000000000",
            "",
        ),
        (
            "req-3",
            "2025-03-04T03:30:00Z",
            "search",
            "sk-pinA",
            "/v1/chat/completions",
            "auto",
            "gpt-large",
            False,
            2000,
            0,
            500,
            False,
            "0.0250000000",
            900,
            950,
            "miss",
            True,
            200,
            "",
            "request",
            "",
            100,
            "0.0000000000",
            "0.0000000000",
            "0.0024500000",
            "0.0000000000",
            "-0.0000040000",
            "",
        ),
        (
            "req-2",
            "2025-03-03T16:30:00Z",
            "support",
            "sk-pinB",
            "/v1/chat/completions",
            "=cmd|' /C calc'!A0",
            "",
            False,
            0,
            0,
            0,
            False,
            "0.0000000000",
            None,
            3,
            "bypass",
            False,
            400,
            "invalid_request",
            "request",
            "",
            0,
            "0.0000000000",
            "0.0000000000",
            "0.0000000000",
            "0.0000000000",
            "0.0000000000",
            "",
        ),
        (
            "req-1",
            "2025-03-03T14:00:00.123456Z",
            "search",
            "sk-pinA",
            "/v1/chat/completions",
            "auto",
            "gpt-small",
            True,
            100,
            20,
            30,
            False,
            "0.0012345678",
            120,
            150,
            "miss",
            False,
            200,
            "",
            "request",
            "",
            50,
            "0.0000000000",
            "0.0100000000",
            "0.0000000000",
            "0.0000000000",
            "0.0000123000",
            "cust-7",
        ),
    )
]

# Nothing saved, as money reads in the API.
NOTHING = "0.0000000000"
GROUPED_FIELDS = (
    "team",
    "tag",
    "requests",
    "errors",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "cost_usd",
    "cache_write_tokens",
    "saved_cache_usd",
    "saved_routing_usd",
    "saved_compression_usd",
    "saved_batch_usd",
    "saved_provider_cache_usd",
)
GROUPED_JSON = {
    "count": 4,
    "next": None,
    "previous": None,
    "results": [
        dict(zip(GROUPED_FIELDS, values, strict=True))
        for values in (
            (
                "search",
                "(untagged)",
                1,
                0,
                5000,
                0,
                700,
                "0.0250500000",
                100,
                NOTHING,
                NOTHING,
                "0.0024500000",
                NOTHING,
                "-0.0000040000",
            ),
            (
                "search",
                "checkout+eu",
                1,
                0,
                100,
                20,
                30,
                "0.0012345678",
                50,
                NOTHING,
                "0.0100000000",
                NOTHING,
                NOTHING,
                "0.0000123000",
            ),
            ("support", "(untagged)", 1, 1, 0, 0, 0, NOTHING, 0, NOTHING, NOTHING, NOTHING, NOTHING, NOTHING),
            (
                "support",
                "search",
                1,
                1,
                40,
                0,
                0,
                "0.0150000000",
                0,
                "0.0200000000",
                NOTHING,
                NOTHING,
                "0.0005000000",
                NOTHING,
            ),
        )
    ],
}


def test_usage_api_rows_and_groups_are_unchanged(client, pinned):
    client.force_login(pinned.finance_user)
    rows = client.get("/api/usage/", {"tenant": "pin", "since": "2025-03-01", "until": "2025-03-04"})
    assert rows.json()["results"] == PER_REQUEST_JSON
    assert [list(row) for row in rows.json()["results"]] == [list(row) for row in PER_REQUEST_JSON]
    groups = client.get(
        "/api/usage/", {"tenant": "pin", "since": "2025-03-01", "until": "2025-03-04", "group_by": "team,tag"}
    )
    assert groups.json() == GROUPED_JSON
    assert [list(row) for row in groups.json()["results"]] == [list(row) for row in GROUPED_JSON["results"]]
    tag_first = client.get(
        "/api/usage/", {"tenant": "pin", "since": "2025-03-01", "until": "2025-03-04", "group_by": "tag,team"}
    )
    assert list(tag_first.json()["results"][0]) == ["tag", "team", *list(GROUPED_JSON["results"][0])[2:]]


STATEMENT_CSV = (
    "tenant,pin,month,2025-03\r\n"
    "section,team,model,requests,errors,prompt_tokens,completion_tokens,cost_usd,cost_usd_rounded\r\n"
    "line,search,gpt-large,1,0,2000,500,0.0250000000,0.02\r\n"
    "line,search,gpt-small,1,0,3100,230,0.0012845678,0.00\r\n"
    "line,support,(none),2,1,0,0,2.0000000000,2.00\r\n"
    "line,support,gpt-large,1,1,40,0,0.0150000000,0.02\r\n"
    "team_total,search,,,,,,0.0262845678,0.03\r\n"
    "team_total,support,,,,,,2.0150000000,2.02\r\n"
    "model_total,,(none),,,,,2.0000000000,2.00\r\n"
    "model_total,,gpt-large,,,,,0.0400000000,0.04\r\n"
    "model_total,,gpt-small,,,,,0.0012845678,0.00\r\n"
    "total,,,5,,,,2.0412845678,2.04\r\n"
    "saved_cache,,,,,,,0.0200000000,0.02\r\n"
    "saved_routing,,,,,,,0.0100000000,0.01\r\n"
    "saved_compression,,,,,,,0.0024500000,0.00\r\n"
    "saved_batch,,,,,,,0.0005000000,0.00\r\n"
    "saved_provider_cache,,,,,,,0.0000083000,0.00\r\n"
    "evaluation_spend,,,,,,,0.0000000000,0.00\r\n"
    "budget_spent,pin tenant month $50 (2025-03),,,,,,2.0412845678,2.04\r\n"
    "budget_limit,pin tenant month $50 (2025-03),,,,,,50.0000000000,50.00\r\n"
)


def test_statement_csv_is_unchanged(pinned):
    assert statement_csv(statement_build(tenant=pinned, month=date(2025, 3, 1))) == STATEMENT_CSV


USAGE_REPORT_BY_DAY = {
    "tenant": "pin",
    "time_zone": "America/New_York",
    "since": "2025-03-01",
    "until": "2025-03-04",
    "group_by": "day",
    "rows": [
        {
            "group": "2025-03-03",
            "requests": 3,
            "errors": 1,
            "prompt_tokens": 5100,
            "cached_tokens": 20,
            "completion_tokens": 730,
            "cost_usd": "0.0262845678",
            "routed_to_large": 1,
            "routed_to_large_percent": "33.3",
        },
        {
            "group": "2025-03-04",
            "requests": 1,
            "errors": 1,
            "prompt_tokens": 40,
            "cached_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": "0.0150000000",
            "routed_to_large": 0,
            "routed_to_large_percent": "0.0",
        },
    ],
    "total": {
        "group": "TOTAL",
        "requests": 4,
        "errors": 2,
        "prompt_tokens": 5140,
        "cached_tokens": 20,
        "completion_tokens": 730,
        "cost_usd": "0.0412845678",
        "routed_to_large": 1,
        "routed_to_large_percent": "25.0",
    },
}

USAGE_REPORT_BY_POLICY_CSV = (
    "policy,requests,errors,prompt_tokens,cached_tokens,completion_tokens,cost_usd,routed_to_large,"
    "routed_to_large_percent\r\n"
    "v3,2,0,2100,20,530,0.0262345678,1,50.0\r\n"
    "(no policy),2,2,3040,0,200,0.0150500000,0,0.0\r\n"
    "TOTAL,4,2,5140,20,730,0.0412845678,1,25.0\r\n"
)


def test_usage_report_is_unchanged(pinned, capsys):
    period = ["--tenant", "pin", "--since", "2025-03-01", "--until", "2025-03-04"]
    call_command("usage_report", *period, "--group-by", "day", "--format", "json")
    assert json.loads(capsys.readouterr().out) == USAGE_REPORT_BY_DAY
    call_command("usage_report", *period, "--group-by", "policy", "--format", "csv")
    assert capsys.readouterr().out == USAGE_REPORT_BY_POLICY_CSV

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import UsageRecord
from tests.admin.scenario import SUPERUSER, World, admin_url, make_user
from tests.factories import UsageRecordFactory


@pytest.fixture
def superuser_client(client, world: World):
    client.force_login(make_user(SUPERUSER, tenant=world.acme.tenant))
    return client


def test_superuser_cannot_add_a_usage_record(superuser_client, world: World):
    get_response = superuser_client.get(admin_url("billing_usagerecord", "add"))
    post_response = superuser_client.post(
        admin_url("billing_usagerecord", "add"), {"request_id": "forged", "http_status": 200}
    )

    assert (get_response.status_code, post_response.status_code) == (403, 403)
    assert not UsageRecord.objects.unscoped().filter(request_id="forged").exists()


def test_superuser_sees_a_usage_record_read_only(superuser_client, world: World):
    record = world.acme.usage_record

    html = superuser_client.get(admin_url("billing_usagerecord", "change", record.pk)).content.decode()
    response = superuser_client.post(admin_url("billing_usagerecord", "change", record.pk), {"http_status": 500})

    assert record.request_id in html
    assert 'name="_save"' not in html
    assert response.status_code == 403
    record.refresh_from_db()
    assert record.http_status == 200


def test_superuser_cannot_delete_a_usage_record(superuser_client, world: World):
    record = world.acme.usage_record

    delete_page = superuser_client.get(admin_url("billing_usagerecord", "delete", record.pk))
    changelist = superuser_client.get(admin_url("billing_usagerecord", "changelist")).content.decode()
    superuser_client.post(
        admin_url("billing_usagerecord", "changelist"),
        {"action": "delete_selected", "_selected_action": [record.pk], "post": "yes"},
    )

    assert delete_page.status_code == 403
    assert "delete_selected" not in changelist
    assert UsageRecord.objects.unscoped().filter(pk=record.pk).exists()


def test_changelist_queries_do_not_grow_with_rows(superuser_client, world: World):
    def changelist_query_count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert superuser_client.get(admin_url("billing_usagerecord", "changelist")).status_code == 200
        return len(queries)

    few_rows = changelist_query_count()
    for _ in range(5):
        UsageRecordFactory(api_key=world.globex.api_key)

    assert changelist_query_count() == few_rows


@pytest.mark.parametrize(
    "params",
    [
        {"kind": "\x00"},
        {"served_model": "m\x00"},
        {"cache_status": "\x00"},
        {"customer": "alice\x00"},
        {"request_id__startswith": "\x00"},
        {"q": "req\x00"},
        {"kind\x00": "chat"},
    ],
)
def test_a_changelist_filter_or_search_holding_nul_is_a_400(superuser_client, world: World, params):
    response = superuser_client.get(admin_url("billing_usagerecord", "changelist"), params)

    assert response.status_code == 400
    assert b"NUL" in response.content


def test_a_changelist_filter_without_nul_still_finds_its_rows(superuser_client, world: World):
    record = world.acme.usage_record

    response = superuser_client.get(
        admin_url("billing_usagerecord", "changelist"), {"request_id__startswith": record.request_id}
    )

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [record]

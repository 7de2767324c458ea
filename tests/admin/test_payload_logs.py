"""Payload logs hold what a tenant's users asked and were told, personal data included where redaction missed it: only
the tenant's owners and admins (and superusers) read them; its finance and viewer members get no page, no row and no
search, as if the logs did not exist."""

import pytest
from django.urls import reverse

from tenants.models import PayloadLog, Role
from tenants.services import membership_set
from tests.admin.scenario import SUPERUSER, World, admin_url, make_user

CHANGELIST = admin_url("tenants_payloadlog", "changelist")
PROMPT = "My name is Jane Roe and I live at 12 Elm Street"


@pytest.fixture
def logs(world: World) -> dict[str, PayloadLog]:
    return {
        rows.tenant.slug: PayloadLog.objects.create(
            tenant=rows.tenant,
            request_id=f"req-log-{rows.tenant.slug}",
            request={"messages": [{"role": "user", "content": f"{PROMPT} ({rows.tenant.slug})"}]},
            response={"choices": [{"message": {"content": "Noted."}}]},
        )
        for rows in (world.acme, world.globex)
    }


def listed_models(response) -> set[str]:
    return {model["object_name"] for app in response.context["app_list"] for model in app["models"]}


def answers_like_a_missing_row(client, view: str, row: PayloadLog) -> bool:
    missing_pk = PayloadLog._base_manager.order_by("-pk").first().pk + 1000
    response = client.get(admin_url("tenants_payloadlog", view, row.pk))
    missing = client.get(admin_url("tenants_payloadlog", view, missing_pk))
    return (response.status_code, response.get("Location")) == (missing.status_code, missing.get("Location"))


@pytest.mark.parametrize("role", [Role.FINANCE, Role.VIEWER])
def test_finance_and_viewer_members_never_reach_their_tenants_payload_logs(client, world: World, logs, role):
    client.force_login(make_user(role, tenant=world.acme.tenant))
    own = logs["acme"]

    listed = client.get(CHANGELIST)
    searched = client.get(CHANGELIST, {"q": own.request_id})
    index, app_index = client.get(reverse("admin:index")), client.get(reverse("admin:app_list", args=["tenants"]))

    assert (listed.status_code, searched.status_code) == (403, 403)
    for view in ("change", "history"):
        assert answers_like_a_missing_row(client, view, own), view
    assert "PayloadLog" not in listed_models(index) | listed_models(app_index)
    assert "PayloadLogSettings" in listed_models(index)
    for page in (listed, searched, index, app_index, client.get(admin_url("tenants_payloadlog", "change", own.pk))):
        assert PROMPT not in page.content.decode()


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN, SUPERUSER])
def test_owners_admins_and_superusers_read_payload_logs(client, world: World, logs, role):
    client.force_login(make_user(role, tenant=world.acme.tenant))
    own = logs["acme"]

    searched = client.get(CHANGELIST, {"q": own.request_id})
    shown = client.get(admin_url("tenants_payloadlog", "change", own.pk))

    assert [row.pk for row in searched.context["cl"].result_list] == [own.pk]
    assert shown.status_code == 200 and f"{PROMPT} (acme)" in shown.content.decode()
    assert "PayloadLog" in listed_models(client.get(reverse("admin:index")))


def test_an_owner_of_one_tenant_and_viewer_of_another_reads_only_the_owned_tenants_logs(client, world: World, logs):
    user = make_user(Role.OWNER, tenant=world.acme.tenant)
    membership_set(tenant=world.globex.tenant, user=user, role=Role.VIEWER)
    client.force_login(user)

    listed = client.get(CHANGELIST)
    searched = client.get(CHANGELIST, {"q": logs["globex"].request_id})

    assert [row.pk for row in listed.context["cl"].result_list] == [logs["acme"].pk]
    assert searched.context["cl"].result_count == 0
    assert answers_like_a_missing_row(client, "change", logs["globex"])
    assert "(globex)" not in listed.content.decode()

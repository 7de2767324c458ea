"""A Slack channel's webhook URL is a secret (anyone holding it posts to the channel): only the members who may edit
the channel see it, search it or filter on it in the admin."""

import pytest

from billing.alerts.services import alert_channel_create
from billing.models import AlertChannel, ChannelKind
from tenants.models import AuditEvent, Role
from tenants.services import membership_set
from tests.admin.scenario import World, admin_url, make_user

SLACK_PATH = "hooks.slack.com/services/T0ACME/B0ALERTS/s3cr3tW3bh00kT0k3n"
CHANGELIST = admin_url("billing_alertchannel", "changelist")


def slack_channel(tenant, name: str, path: str = SLACK_PATH) -> AlertChannel:
    return alert_channel_create(tenant=tenant, name=name, kind=ChannelKind.SLACK, target=f"https://{path}")


@pytest.fixture
def slack(world: World) -> AlertChannel:
    alert_channel_create(tenant=world.acme.tenant, name="acme-mail", kind=ChannelKind.EMAIL, target="ops@acme.test")
    return slack_channel(world.acme.tenant, "acme-slack")


@pytest.mark.parametrize("role", [Role.VIEWER, Role.FINANCE])
def test_a_member_who_may_not_edit_channels_never_sees_nor_finds_a_slack_url(client, world: World, slack, role):
    client.force_login(make_user(role, tenant=world.acme.tenant))

    listed = client.get(CHANGELIST)
    shown = client.get(admin_url("billing_alertchannel", "change", slack.pk))
    searched = client.get(CHANGELIST, {"q": "B0ALERTS"})
    filtered = client.get(CHANGELIST, {"target__contains": "B0ALERTS"})

    assert (listed.status_code, shown.status_code, searched.status_code) == (200, 200, 200)
    for page in (listed, shown, searched, filtered):
        assert "hooks.slack.com/services" not in page.content.decode()
    page = listed.content.decode()
    assert "acme-slack" in page and "https://hooks.slack.com/[API_KEY]" in page and "ops@acme.test" in page
    assert "https://hooks.slack.com/[API_KEY]" in shown.content.decode()
    assert searched.context["cl"].result_count == 0
    assert filtered.status_code == 400


def test_an_owner_sees_searches_and_edits_the_slack_url(client, world: World, slack):
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))

    listed = client.get(CHANGELIST)
    shown = client.get(admin_url("billing_alertchannel", "change", slack.pk))
    searched = client.get(CHANGELIST, {"q": "B0ALERTS"})

    assert SLACK_PATH in listed.content.decode()
    assert f'value="https://{SLACK_PATH}"' in shown.content.decode()
    assert [channel.pk for channel in searched.context["cl"].result_list] == [slack.pk]


def test_one_list_masks_the_url_of_the_tenant_the_user_only_views(client, world: World, slack):
    viewed = slack_channel(world.globex.tenant, "globex-slack", "hooks.slack.com/services/T0GLOBEX/B0X/v1ewedT0k3n")
    user = make_user(Role.OWNER, tenant=world.acme.tenant)
    membership_set(tenant=world.globex.tenant, user=user, role=Role.VIEWER)
    client.force_login(user)

    listed = client.get(CHANGELIST).content.decode()
    searched = client.get(CHANGELIST, {"q": "T0GLOBEX"})

    assert SLACK_PATH in listed and "globex-slack" in listed
    assert viewed.target.removeprefix("https://") not in listed
    assert searched.context["cl"].result_count == 0


def test_the_audit_log_keeps_a_slack_url_masked_and_an_email_address_as_it_is(world: World, slack):
    """Every member may read the tenant's audit log: a Slack URL there is masked as a secret is (whether it changed
    still shows), an email address is not a secret."""
    events = AuditEvent.objects.for_tenant(world.acme.tenant).filter(object_type="billing.alertchannel")
    targets = {event.object_repr: event.after["target"] for event in events}

    assert targets["acme/acme-slack (slack)"].startswith("***")
    assert SLACK_PATH not in str(list(events.values_list("after", flat=True)))
    assert targets["acme/acme-mail (email)"] == "ops@acme.test"

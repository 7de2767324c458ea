"""The cache entries admin: the tenant's owners and admins only, their own tenant only, and redacted."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from routing.cache.sealed import seal_answer, seal_prompt
from routing.models import CacheEntry, CacheEntryKind
from tenants.models import Role
from tenants.services import membership_set
from tests.admin.scenario import make_user, make_world

CARD, EMAIL = "4111 1111 1111 1111", "jane.doe@example.com"


def entry(rows, *, prompt: str) -> CacheEntry:
    return CacheEntry.objects.create(
        tenant=rows.tenant,
        served_model=rows.catalog_model.name,
        key_hash=f"{rows.tenant.pk:064x}",
        kind=CacheEntryKind.SEMANTIC,
        # Stored before a redaction rule that now finds something in it, as a new rule would.
        prompt_encrypted=seal_prompt(prompt),
        answer_encrypted=seal_answer(
            {"choices": [{"message": {"role": "assistant", "content": f"Card {CARD} belongs to {EMAIL}."}}]}
        ),
        expires_at=timezone.now() + timedelta(hours=1),
    )


@pytest.fixture
def world(db):
    world = make_world()
    world.acme_entry = entry(world.acme, prompt=f"whose card is {CARD}?")
    world.globex_entry = entry(world.globex, prompt="globex question")
    return world


def change_page(entry: CacheEntry) -> str:
    return reverse("admin:routing_cacheentry_change", args=[entry.pk])


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_a_tenant_admin_sees_their_entries_redacted_and_no_other_tenants(client, world, role):
    client.force_login(make_user(role, tenant=world.acme.tenant))

    page = client.get(change_page(world.acme_entry))
    assert page.status_code == 200
    html = page.content.decode()
    assert "whose card is [CARD]?" in html and "[EMAIL]" in html
    assert CARD not in html and EMAIL not in html
    assert client.get(change_page(world.globex_entry)).status_code in (302, 404)


@pytest.mark.parametrize("role", [Role.VIEWER, Role.FINANCE])
def test_viewers_and_finance_members_do_not_see_cache_entries(client, world, role):
    client.force_login(make_user(role, tenant=world.acme.tenant))

    assert client.get(reverse("admin:routing_cacheentry_changelist")).status_code == 403
    assert client.get(change_page(world.acme_entry)).status_code in (302, 403, 404)


def test_an_admin_of_one_tenant_and_viewer_of_another_sees_only_the_first(client, world):
    user = make_user(Role.ADMIN, tenant=world.acme.tenant)
    membership_set(tenant=world.globex.tenant, user=user, role=Role.VIEWER)
    client.force_login(user)

    changelist = client.get(reverse("admin:routing_cacheentry_changelist"))
    assert list(changelist.context["cl"].result_list) == [world.acme_entry]
    assert client.get(change_page(world.globex_entry)).status_code in (302, 404)

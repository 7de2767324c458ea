"""Batches and jobs in the admin: a tenant's staff see their own, read-only, with progress and savings."""

from decimal import Decimal

import pytest
from django.utils import timezone

from llmops.gateway.batches.models import Batch, File, Job
from tenants.models import Role
from tests.admin import conftest as admin_conftest
from tests.admin.scenario import World, admin_url, make_user

# The admin tests' two tenants with a row of everything each.
module_world, world = admin_conftest.module_world, admin_conftest.world


def _batch(rows) -> Batch:
    file = File.objects.create(
        tenant=rows.tenant, team=rows.team, api_key=rows.api_key, purpose="batch", filename="in.jsonl", bytes=1
    )
    return Batch.objects.create(
        tenant=rows.tenant,
        team=rows.team,
        api_key=rows.api_key,
        input_file=file,
        endpoint="/v1/chat/completions",
        expires_at=timezone.now(),
        total_count=10,
        completed_count=6,
        failed_count=1,
        saved_batch_usd=Decimal("0.0123"),
    )


@pytest.fixture
def batches(world: World):
    return _batch(world.acme), _batch(world.globex)


def test_a_tenants_viewer_sees_its_batches_and_jobs_only(client, world: World, batches):
    acme_batch, globex_batch = batches
    acme_job = Job.objects.create(tenant=world.acme.tenant, team=world.acme.team, api_key=world.acme.api_key, body={})
    client.force_login(make_user(Role.VIEWER, tenant=world.acme.tenant))

    listing = client.get(admin_url("gateway_batch", "changelist")).content.decode()
    jobs = client.get(admin_url("gateway_job", "changelist")).content.decode()
    foreign = client.get(admin_url("gateway_batch", "change", globex_batch.pk))
    own = client.post(admin_url("gateway_batch", "change", acme_batch.pk), {"status": "completed"})

    assert acme_batch.pk in listing and globex_batch.pk not in listing
    assert "7 / 10 (1 failed)" in listing and "0.0123" in listing
    assert acme_job.pk in jobs
    assert foreign.status_code == 302  # the admin's answer for an object the user cannot see
    assert own.status_code == 403 and Batch.objects.unscoped().get(pk=acme_batch.pk).status == "validating"

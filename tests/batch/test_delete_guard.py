"""A key, team or tenant whose batches have not finished, or whose jobs are running, cannot be deleted: the cascade
would orphan the batches' budget holds and provider batches, and a running job's ledger row. Finished work, and jobs
still queued (which hold nothing), go with their owner, as before; revoking a key, the way to stop it, keeps
working."""

import pytest
from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from llmops.gateway.batches.models import BATCH_FINISHED, Batch, BatchStatus, File, Job, JobStatus
from routing.models import RoutingPolicyAudit
from routing.services import routing_policy_create_default, tenant_model_access_set
from tenants.models import ApiKey, Role, Tenant
from tenants.services import api_key_create, api_key_revoke
from tests.admin.scenario import SUPERUSER, admin_url, make_user
from tests.factories import ModelFactory, TeamFactory, TenantFactory

pytestmark = pytest.mark.django_db

BATCH_UNFINISHED = [status for status in BatchStatus if status not in BATCH_FINISHED]
JOB_UNFINISHED = [JobStatus.IN_PROGRESS]


@pytest.fixture
def api_key() -> ApiKey:
    return api_key_create(team=TeamFactory(), name="batch-key")[0]


def batch_of(api_key: ApiKey, status: str) -> Batch:
    owner = {"tenant_id": api_key.tenant_id, "team_id": api_key.team_id, "api_key": api_key}
    file = File.objects.create(**owner, purpose="batch", filename="in.jsonl", bytes=1, storage_key="in.jsonl")
    return Batch.objects.create(
        **owner, input_file=file, endpoint="/v1/chat/completions", expires_at=timezone.now(), status=status
    )


def job_of(api_key: ApiKey, status: str) -> Job:
    return Job.objects.create(
        tenant_id=api_key.tenant_id, team_id=api_key.team_id, api_key=api_key, body={}, status=status
    )


def refusal_of(owner) -> ProtectedError:
    # The refusal comes inside the deletion's transaction: a savepoint lets the test go on using the connection.
    with pytest.raises(ProtectedError) as refusal, transaction.atomic():
        owner.delete()
    return refusal.value


def exists(row) -> bool:
    return type(row)._base_manager.filter(pk=row.pk).exists()


@pytest.mark.parametrize("status", BATCH_UNFINISHED)
def test_a_key_with_a_batch_not_finished_is_not_deleted(api_key, status):
    batch = batch_of(api_key, status)

    refusal = refusal_of(api_key)

    assert f"batch {batch.pk} ({status})" in str(refusal)
    assert list(refusal.protected_objects) == [batch]
    assert exists(api_key) and exists(batch)


@pytest.mark.parametrize("status", JOB_UNFINISHED)
def test_a_key_with_a_job_not_finished_is_not_deleted(api_key, status):
    job = job_of(api_key, status)

    refusal = refusal_of(api_key)

    assert f"job {job.pk} ({status})" in str(refusal)
    assert exists(api_key) and exists(job)


def test_a_key_whose_work_has_finished_is_deleted_with_it(api_key):
    batch, job = batch_of(api_key, BatchStatus.IN_PROGRESS), job_of(api_key, JobStatus.IN_PROGRESS)
    refusal_of(api_key)
    Batch.objects.for_tenant(api_key.tenant_id).filter(pk=batch.pk).update(status=BatchStatus.COMPLETED)
    Job.objects.for_tenant(api_key.tenant_id).filter(pk=job.pk).update(status=JobStatus.FAILED)

    key_id = api_key.pk
    api_key.delete()

    assert not ApiKey._base_manager.filter(pk=key_id).exists() and not exists(batch) and not exists(job)


def test_deleting_keys_by_queryset_names_the_work_of_every_key(api_key):
    other_key = api_key_create(team=api_key.team, name="other")[0]
    first, second = batch_of(api_key, BatchStatus.FINALIZING), job_of(other_key, JobStatus.IN_PROGRESS)

    refusal = refusal_of(ApiKey.objects.for_tenant(api_key.tenant_id))

    assert set(refusal.protected_objects) == {first, second}
    assert exists(api_key) and exists(other_key)


def test_revoking_a_key_with_work_in_flight_still_works(client, api_key):
    batch = batch_of(api_key, BatchStatus.IN_PROGRESS)
    other_key = api_key_create(team=api_key.team, name="other")[0]
    job_of(other_key, JobStatus.QUEUED)
    client.force_login(make_user(Role.ADMIN, tenant=api_key.tenant))

    api_key_revoke(api_key=api_key)
    response = client.post(
        admin_url("tenants_apikey", "changelist"), {"action": "revoke_keys", "_selected_action": [other_key.pk]}
    )

    assert response.status_code == 302
    assert all(key.revoked_at is not None for key in ApiKey.objects.for_tenant(api_key.tenant_id))
    # Revoking is not deleting: the batch keeps running until the worker stops it.
    assert Batch.objects.for_tenant(api_key.tenant_id).get().status == BatchStatus.IN_PROGRESS == batch.status


@pytest.mark.parametrize("admin_name", ["tenants_apikey", "tenants_team", "tenants_tenant"])
def test_the_admin_lists_the_work_that_protects_a_key_team_or_tenant_and_does_not_delete_it(
    client, api_key, admin_name
):
    batch, job = batch_of(api_key, BatchStatus.IN_PROGRESS), job_of(api_key, JobStatus.IN_PROGRESS)
    owner = {"tenants_apikey": api_key, "tenants_team": api_key.team, "tenants_tenant": api_key.tenant}[admin_name]
    client.force_login(make_user(SUPERUSER, tenant=api_key.tenant))

    page = client.get(admin_url(admin_name, "delete", owner.pk)).content.decode()
    refused = client.post(admin_url(admin_name, "delete", owner.pk), {"post": "yes"})
    selected = {"action": "delete_selected", "_selected_action": [owner.pk]}
    bulk = client.post(admin_url(admin_name, "changelist"), selected).content.decode()
    bulk_confirmed = client.post(admin_url(admin_name, "changelist"), {**selected, "post": "yes"})

    for html in (page, bulk):
        assert "protected related objects" in html
        assert f"batch {batch.pk} (in_progress)" in html and f"job {job.pk} (in_progress)" in html
        assert "Batches and jobs that have not finished protect their key, team and tenant from deletion" in html
    # A confirmation anyway gets the page again, not a deletion.
    for response in (refused, bulk_confirmed):
        assert response.status_code == 200 and f"batch {batch.pk} (in_progress)" in response.content.decode()
    assert exists(owner) and exists(batch) and exists(job)


def test_the_admin_still_deletes_a_key_with_no_work(client, api_key):
    key_id = api_key.pk
    client.force_login(make_user(Role.OWNER, tenant=api_key.tenant))

    page = client.get(admin_url("tenants_apikey", "delete", api_key.pk)).content.decode()
    response = client.post(admin_url("tenants_apikey", "delete", api_key.pk), {"post": "yes"})

    assert "Are you sure" in page
    assert response.status_code == 302 and not ApiKey._base_manager.filter(pk=key_id).exists()


def test_a_key_whose_job_is_still_queued_is_deleted_with_it(api_key):
    """A queued job holds nothing and has cost nothing; a worker that finds its row gone runs nothing. Its key is not
    held hostage by a job whose message the broker lost."""
    job = job_of(api_key, JobStatus.QUEUED)

    api_key.delete()

    assert not exists(job)


def test_a_tenant_whose_routing_policy_is_live_is_deleted_with_it():
    """The live version protects nothing once its policy goes too: the tenant's policy, versions and their audit log
    are deleted with it."""
    tenant, small, large = TenantFactory(), ModelFactory(), ModelFactory()
    tenant_model_access_set(tenant=tenant, allowed_models=[small, large], default_model=small)
    policy = routing_policy_create_default(tenant=tenant, small_model=small, large_model=large)
    tenant_id, version = tenant.pk, policy.live_version

    tenant.delete()

    assert not Tenant._base_manager.filter(pk=tenant_id).exists()
    assert not exists(policy) and not exists(version)
    assert not RoutingPolicyAudit.objects.for_tenant(tenant_id).exists()

"""Batches and jobs in the admin: a tenant's staff see their own, read-only, with progress and savings; a job's
prompt and answer only those who may read the tenant's answers."""

import re
from decimal import Decimal

import pytest
from django.utils import timezone

from llmops.gateway.batches.models import Batch, File, Job
from tenants.models import Role
from tenants.services import membership_set
from tests.admin import conftest as admin_conftest
from tests.admin.scenario import SUPERUSER, World, admin_url, make_user

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


def _job(rows, **fields) -> Job:
    return Job.objects.create(tenant=rows.tenant, team=rows.team, api_key=rows.api_key, **fields)


@pytest.mark.parametrize(
    ("role", "reads_answers"),
    [(Role.OWNER, True), (Role.ADMIN, True), (Role.FINANCE, False), (Role.VIEWER, False)],
)
def test_a_jobs_prompt_answer_and_callback_are_for_those_who_read_answers(client, world: World, role, reads_answers):
    job = _job(
        world.acme,
        request_id="req-salary",
        body={"messages": [{"role": "user", "content": "salary of jane@example.com?"}]},
        result={"choices": [{"message": {"content": "PAYROLL-ANSWER"}}]},
        callback_url="https://hooks.example.com/payroll-callback",
    )
    client.force_login(make_user(role, tenant=world.acme.tenant))

    html = client.get(admin_url("gateway_job", "change", job.pk)).content.decode()

    assert "req-salary" in html
    assert ("salary of" in html) == ("PAYROLL-ANSWER" in html) == ("payroll-callback" in html) == reads_answers
    # Shown redacted, as cached answers are.
    assert "jane@example.com" not in html and ("[EMAIL]" in html) == reads_answers


def test_a_viewer_cannot_filter_jobs_by_their_prompt_answer_or_callback(client, world: World):
    _job(world.acme, body={"messages": [{"role": "user", "content": "my salary"}]}, result={"answer": "PAYROLL"})
    client.force_login(make_user(Role.VIEWER, tenant=world.acme.tenant))
    changelist = admin_url("gateway_job", "changelist")
    probes = (
        {"body__icontains": "salary"},
        {"body__icontains": "no-such-word"},
        {"result__icontains": "PAYROLL"},
        {"callback_url__startswith": "https://"},
    )

    # Refused whatever the guess: the answer says nothing about which prompts hold it.
    assert [client.get(changelist, probe).status_code for probe in probes] == [400] * len(probes)


def test_an_owner_elsewhere_who_only_views_this_tenant_cannot_filter_its_jobs_by_prompt(client, world: World):
    user = make_user(Role.VIEWER, tenant=world.acme.tenant)
    membership_set(tenant=world.globex.tenant, user=user, role=Role.OWNER)
    client.force_login(user)

    page = client.get(admin_url("gateway_job", "changelist"), {"body__icontains": "salary"})

    assert page.status_code == 400


def test_an_owner_filters_jobs_by_their_prompt(client, world: World):
    job = _job(world.acme, body={"messages": [{"role": "user", "content": "my salary"}]})
    _job(world.acme, body={"messages": [{"role": "user", "content": "the weather"}]})
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))

    page = client.get(admin_url("gateway_job", "changelist"), {"body__icontains": "salary"})

    assert list(page.context["cl"].result_list) == [job]


@pytest.mark.parametrize(("role", "sees"), [(Role.OWNER, False), (Role.VIEWER, False), (SUPERUSER, True)])
def test_which_provider_and_model_served_a_batch_is_for_superusers(client, world: World, role, sees):
    batch = _batch(world.acme)
    batch.provider_batches = {"openai:gpt-4o-mini-2024-07-18": {"provider": "openai", "id": "batch_upstream_1"}}
    batch.save(update_fields=["provider_batches"])
    client.force_login(make_user(role, tenant=world.acme.tenant))

    html = client.get(admin_url("gateway_batch", "change", batch.pk)).content.decode()
    probe = client.get(admin_url("gateway_batch", "changelist"), {"provider_batches__icontains": "gpt-4o"})

    assert ("gpt-4o-mini-2024-07-18" in html) == sees
    assert (probe.status_code == 200) == sees


def test_a_job_whose_id_reads_as_an_escape_opens_from_its_link(client, world: World):
    # The admin escapes ids in its links (`_` as `_5F`): `job_22…` read unescaped would be `job"…`.
    job = _job(world.acme, id="job_" + "22" * 12, request_id="req-escaped", body={})
    client.force_login(make_user(Role.OWNER, tenant=world.acme.tenant))

    listing = client.get(admin_url("gateway_job", "changelist")).content.decode()
    link = re.search(r'href="([^"]*/gateway/job/[^"/]+/change/)"', listing)
    page = client.get(link[1])

    assert page.status_code == 200 and "req-escaped" in page.content.decode()
    assert link[1] == admin_url("gateway_job", "change", job.pk)


@pytest.mark.parametrize("view", ["change", "history"])
@pytest.mark.parametrize("admin_name", ["gateway_batch", "gateway_job"])
def test_an_id_holding_nul_answers_as_a_missing_one(client, world: World, admin_name, view):
    client.force_login(make_user(SUPERUSER, tenant=world.acme.tenant))

    nul = client.get(admin_url(admin_name, view, "batch_\x00"))
    missing = client.get(admin_url(admin_name, view, "batch_missing"))

    assert nul.status_code == missing.status_code == 302

"""Job webhooks under a secret made before they were signed as Standard Webhooks, delivered over HTTP."""

import pytest
from standardwebhooks import Webhook

from core.crypto import encrypt_secret
from llmops.gateway.batches.models import Job, JobStatus, JobWebhookSecret, WebhookState
from llmops.gateway.jobs.services import job_webhook_attempt, job_webhook_secret
from tenants.authentication import build_key_index
from tenants.services import api_key_create
from tests.factories import TeamFactory
from tests.webhooks import assert_verified_and_not_forgeable

# What job_webhook_secret made before: whsec_ and 48 hex digits, which read as base64 too.
SECRET_MADE_BEFORE = "whsec_" + "0123456789abcdef" * 3


@pytest.mark.django_db
def test_a_secret_made_before_verifies_as_it_is_shown(receiver):
    team = TeamFactory()
    api_key, _ = api_key_create(team=team)
    principal = build_key_index(tenant_id=team.tenant_id)[api_key.prefix]
    JobWebhookSecret.objects.create(tenant_id=team.tenant_id, secret_encrypted=encrypt_secret(SECRET_MADE_BEFORE))
    job = Job.objects.create(
        tenant_id=principal.tenant_id,
        team_id=principal.team_id,
        api_key_id=principal.key_id,
        body={},
        status=JobStatus.COMPLETED,
        callback_url=f"{receiver.url}/hook",
        webhook_state=WebhookState.PENDING,
    )

    job_webhook_attempt(job_id=job.id)

    [hook] = receiver.app.received
    assert job_webhook_secret(tenant_id=team.tenant_id) == SECRET_MADE_BEFORE
    payload = assert_verified_and_not_forgeable(Webhook(SECRET_MADE_BEFORE), hook.body, hook.headers)
    assert (payload["id"], hook.headers["webhook-id"]) == (job.id, job.id)

"""/api/jobs: one chat completion run in the background, key-authenticated like /v1."""

import orjson
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers

from core.db import database_sync_to_async, storable
from core.webhooks import WEBHOOK_SCHEME
from llmops.gateway.batches.models import Job, JobStatus, WebhookState
from llmops.gateway.errors import GatewayError
from llmops.gateway.jobs.services import job_create, job_payload, job_webhook_secret
from llmops.gateway.jobs.tasks import job_run_task
from llmops.gateway.views import GatewayView

JobRequestSerializer = inline_serializer(
    "JobRequest",
    fields={
        "model": serializers.CharField(),
        "messages": serializers.ListField(child=serializers.DictField(), min_length=1),
        "callback_url": serializers.URLField(
            required=False, help_text="POSTed the finished job, signed (see GET /api/jobs/webhook-secret)."
        ),
    },
)
_stamp = serializers.IntegerField(allow_null=True, help_text="Unix seconds.")
JobSerializer = inline_serializer(
    "Job",
    fields={
        "id": serializers.CharField(),
        "object": serializers.ChoiceField(choices=["job"]),
        "status": serializers.ChoiceField(choices=JobStatus.choices),
        "created_at": serializers.IntegerField(),
        "started_at": _stamp,
        "finished_at": _stamp,
        "request_id": serializers.CharField(allow_null=True),
        "status_code": serializers.IntegerField(allow_null=True),
        "result": serializers.DictField(allow_null=True, help_text="The chat completion, or its error."),
        "cost_usd": serializers.CharField(allow_null=True),
        "callback_url": serializers.CharField(allow_null=True),
        "webhook": inline_serializer(
            "JobWebhook",
            fields={
                "state": serializers.ChoiceField(choices=WebhookState.choices),
                "attempts": serializers.IntegerField(),
                "delivered_at": _stamp,
            },
        ),
    },
)


def _json(payload: dict, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")


def _job_create_and_enqueue(**arguments) -> Job:
    """No transaction around the checks: the callback URL's DNS lookup can take seconds, and must not hold a pooled
    connection meanwhile. The job is one INSERT, committed when it returns, so the task is enqueued after it."""
    job = job_create(**arguments)
    job_run_task.delay(job.id)
    return job


def _job_get(*, tenant_id: int, job_id: str) -> Job:
    job = Job.objects.for_tenant(tenant_id).filter(pk=job_id).first() if storable(job_id) else None
    if job is None:
        raise GatewayError(f"No such job: {job_id}", status=404, code="not_found", param="id")
    return job


class JobsView(GatewayView):
    @extend_schema(
        request=JobRequestSerializer,
        responses={202: JobSerializer},
        description="An OpenAI chat completion body (no streaming), plus an optional callback_url.",
    )
    async def post(self, request):
        job = await database_sync_to_async(_job_create_and_enqueue)(principal=request.user, body=request.data)
        return _json(job_payload(job), status=202)


class JobDetailView(GatewayView):
    @extend_schema(responses=JobSerializer)
    async def get(self, request, job_id: str):
        job = await database_sync_to_async(_job_get)(tenant_id=request.user.tenant_id, job_id=job_id)
        return _json(job_payload(job))


class JobWebhookSecretView(GatewayView):
    @extend_schema(
        responses=inline_serializer(
            "JobWebhookSecret",
            fields={
                "object": serializers.ChoiceField(choices=["webhook_secret"]),
                "secret": serializers.CharField(),
                "algorithm": serializers.ChoiceField(choices=[WEBHOOK_SCHEME]),
            },
        )
    )
    async def get(self, request):
        secret = await database_sync_to_async(job_webhook_secret)(tenant_id=request.user.tenant_id)
        return _json({"object": "webhook_secret", "secret": secret, "algorithm": WEBHOOK_SCHEME})

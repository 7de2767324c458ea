from django.db import models


class ConfigVersion(models.Model):
    """The version of one slice of the gateway's configuration (``shared``, ``keys`` or ``tenant:<id>``), bumped when
    a change to it commits. Used only without Redis; with Redis the versions live there (llmops/gateway/snapshot.py).
    """

    scope = models.CharField(max_length=64, unique=True)
    version = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.scope} at version {self.version}"


from llmops.gateway.batches.models import Batch, BatchLine, File, Job, JobWebhookSecret  # noqa: E402, F401

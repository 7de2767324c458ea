from django.db import models


class ConfigVersion(models.Model):
    """A single counter bumped whenever gateway configuration changes; processes poll it to reload."""

    version = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"config version {self.version}"


from llmops.gateway.batch_models import Batch, BatchLine, File, Job, JobWebhookSecret  # noqa: E402, F401

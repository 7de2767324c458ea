from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "llmops.gateway"
    label = "gateway"
    verbose_name = "Gateway"

    def ready(self):
        from llmops.gateway import snapshot
        from llmops.gateway.batches.models import BATCH_FINISHED, Batch, Job, JobStatus
        from tenants.deletion import owners_protected_by

        snapshot.connect_invalidation_signals()
        # A batch holds budget reservations and runs provider batches until it ends; a job holds nothing until a
        # worker takes it (one that finds its row gone runs nothing), and then its ledger row is on the way.
        owners_protected_by(Batch, unless_status_in=BATCH_FINISHED)
        owners_protected_by(Job, unless_status_in=(JobStatus.QUEUED, JobStatus.COMPLETED, JobStatus.FAILED))

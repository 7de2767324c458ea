from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "llmops.gateway"
    label = "gateway"
    verbose_name = "Gateway"

    def ready(self):
        from llmops.gateway import snapshot

        snapshot.connect_invalidation_signals()

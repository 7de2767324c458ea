from django.apps import AppConfig


class TenantsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "tenants"

    def ready(self):
        from tenants.audit import audit_signals_connect
        from tenants.deletion import deletion_guard_connect

        audit_signals_connect()
        deletion_guard_connect()

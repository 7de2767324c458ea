"""The ledger's index for end customers, built without blocking the gateways: on PostgreSQL with CREATE INDEX
CONCURRENTLY (ledger inserts go on while it builds), partial, so rows without a customer cost it nothing.

It serves grouping a tenant's usage by customer, one customer's statement, and seeding a customer's budget counter
from the ledger. A build cut short leaves an invalid index behind; running migrate again drops it and builds it anew.
"""

from django.db import migrations, models

CUSTOMER_INDEX = models.Index(
    fields=["tenant", "customer", "created_at"], condition=~models.Q(customer=""), name="usage_tenant_customer"
)


def _on_postgres(schema_editor) -> bool:
    return schema_editor.connection.vendor == "postgresql"


def customer_index_create(apps, schema_editor):
    if not _on_postgres(schema_editor):
        schema_editor.add_index(apps.get_model("billing", "UsageRecord"), CUSTOMER_INDEX)
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {CUSTOMER_INDEX.name}")
    schema_editor.execute(
        f"CREATE INDEX CONCURRENTLY {CUSTOMER_INDEX.name} ON billing_usagerecord (tenant_id, customer, created_at) "
        "WHERE NOT (customer = '')"
    )


def customer_index_drop(apps, schema_editor):
    if not _on_postgres(schema_editor):
        schema_editor.remove_index(apps.get_model("billing", "UsageRecord"), CUSTOMER_INDEX)
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {CUSTOMER_INDEX.name}")


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [("billing", "0009_end_customers")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(customer_index_create, customer_index_drop)],
            state_operations=[migrations.AddIndex(model_name="usagerecord", index=CUSTOMER_INDEX)],
        ),
    ]

"""The ledger is append-only in Postgres: a trigger refuses UPDATE and DELETE of usage rows, from any client.

The one exception is the retention purge (billing.ledger.services.usage_records_purge), which sets the transaction-local
setting llmops.ledger_purge = 'on' before it deletes. SQLite (the embedded demo) relies on the model's guards.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION billing_usage_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('llmops.ledger_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the usage ledger is append-only: % of billing_usagerecord refused', TG_OP
        USING HINT = 'Old rows are removed only by the retention purge: manage.py ledger_purge.';
END;
$$;
CREATE TRIGGER billing_usage_append_only BEFORE UPDATE OR DELETE ON billing_usagerecord
    FOR EACH ROW EXECUTE FUNCTION billing_usage_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS billing_usage_append_only ON billing_usagerecord;
DROP FUNCTION IF EXISTS billing_usage_append_only();
"""


def _on_postgres(sql):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_budget_counter_version")]

    operations = [migrations.RunPython(_on_postgres(CREATE), _on_postgres(DROP))]

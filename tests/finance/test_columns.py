"""The ledger's columns are defined once (billing/ledger/columns.py): the docs' tables, the usage API and its schema
follow that definition. The outputs themselves are pinned in test_outputs_pinned.py."""

from billing.ledger.columns import AGGREGATE_COLUMNS, REQUEST_COLUMNS, ExportGrouping, columns_markdown
from billing.management.commands.ledger_columns_doc import docs_path, documented_columns


def test_the_docs_column_tables_are_the_definitions():
    assert documented_columns(docs_path().read_text()) == columns_markdown(), (
        "docs/finance.md differs from billing/ledger/columns.py: run `manage.py ledger_columns_doc`"
    )


def test_the_schema_describes_ledger_rows_and_groups_from_the_definitions(client, db):
    schemas = client.get("/api/schema/", {"format": "json"}).json()["components"]["schemas"]
    api_rows = [column for column in REQUEST_COLUMNS if column.in_api]
    api_totals = [column for column in AGGREGATE_COLUMNS if column.in_api]
    row, group = schemas["UsageRecord"]["properties"], schemas["UsageGroup"]["properties"]
    assert list(row) == [column.name for column in api_rows]
    # drf-spectacular adds an enum's values after its description.
    assert all(row[column.name]["description"].startswith(column.description) for column in api_rows)
    assert list(group) == [*ExportGrouping.values, *(column.name for column in api_totals)]
    assert [group[column.name]["description"] for column in api_totals] == [column.description for column in api_totals]
    assert {schema["$ref"] for schema in schemas["UsageRow"]["oneOf"]} == {
        "#/components/schemas/UsageRecord",
        "#/components/schemas/UsageGroup",
    }

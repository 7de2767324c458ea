"""The ledger drainer fills every column of a UsageRecord but its key from the UsageEvent field of the same name
(billing/ledger/stream.py, COPY on Postgres), without calling the model's ``pre_save``: a column the event does not
carry, or one the model fills as it saves, would be written as NULL or wrong for every row."""

from billing.ledger.stream import _EVENT_FIELDS, _row_fields
from billing.models import UsageRecord


def test_every_ledger_column_but_the_key_is_an_event_field():
    columns = {field.attname for field in UsageRecord._meta.concrete_fields if not field.primary_key}

    assert columns == set(_EVENT_FIELDS)
    assert {field.attname for field in _row_fields()} == columns


def test_no_ledger_column_is_filled_as_the_row_is_saved():
    filled_on_save = [
        field.name
        for field in _row_fields()
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)
    ]

    assert filled_on_save == []

"""Empty the test database after a transactional test by DELETE, where Django's flush uses TRUNCATE.

Postgres's TRUNCATE gives every table, index and sequence of the schema a new file (over 300 of them here): 0.4 to
2 s per test measured on the 2-core machine, and the suite has some 200 tests on committed data. A DELETE of the
few rows a test left, with the locks and the signal below, took 0.05 to 0.15 s. The result is the state Django's
flush leaves: every table of an installed model empty, under the same ACCESS EXCLUSIVE locks TRUNCATE takes (so a
write still in flight finishes first, and none starts until the tables are empty), and the post_migrate signal
sent after. The content types and permissions that signal creates are left in place rather than deleted and
recreated; the signal restores any a test removed. The ledger's append-only trigger lets the DELETE through the
way it lets the retention purge (billing.ledger.services.usage_records_purge) through, with llmops.ledger_purge set for
this transaction only.

The signal's receivers (contenttypes' and auth's, the only ones installed) do nothing but create the content types
and permissions that are missing, and checking every app for them costs some 30 ms a test, most of the DELETE's time.
So it is sent only when those two tables differ from how the last flush left them (a fingerprint of every row, read
in one query of under a millisecond): a test that removed, added or changed one still gets the signal.
"""

from contextlib import contextmanager

from django.core.management.sql import emit_post_migrate_signal
from django.db import connections, transaction
from django.test import TransactionTestCase

from routing.models import CacheEntry

KEPT_TABLES = {"django_content_type", "auth_permission"}
# pgvector's HNSW graph keeps deleted rows until a vacuum, and a search among enough of them can come back empty: the
# next test's semantic lookups would miss a live entry. The table's own autovacuum comes too late for the next test.
VACUUMED_TABLE = CacheEntry._meta.db_table
# The kept tables as they were after the last flush (or the migration), per database alias.
_kept_fingerprints: dict[str, str] = {}


def kept_tables_fingerprint(alias: str) -> str:
    """A digest of every row of the kept tables, in primary key order."""
    connection = connections[alias]
    parts = []
    with connection.cursor() as cursor:
        for table in sorted(KEPT_TABLES):
            quoted = connection.ops.quote_name(table)
            cursor.execute(f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) FROM {quoted} t")
            parts.append(cursor.fetchone()[0])
    return ":".join(parts)


def database_empty(alias: str) -> None:
    connection = connections[alias]
    tables = sorted(
        set(connection.introspection.django_table_names(only_existing=True, include_views=False)) - KEPT_TABLES
    )
    quoted = [connection.ops.quote_name(table) for table in tables]
    deleted = {}
    with transaction.atomic(using=alias), connection.cursor() as cursor:
        # Django creates its foreign keys DEFERRABLE INITIALLY DEFERRED: checked at commit, when every table is empty.
        cursor.execute(f"LOCK TABLE {', '.join(quoted)} IN ACCESS EXCLUSIVE MODE")
        cursor.execute("SET LOCAL llmops.ledger_purge = 'on'")
        for table, name in zip(tables, quoted, strict=True):
            cursor.execute(f"DELETE FROM {name}")
            deleted[table] = cursor.rowcount
    if deleted.get(VACUUMED_TABLE):
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM {connection.ops.quote_name(VACUUMED_TABLE)}")
    fingerprint = kept_tables_fingerprint(alias)
    if fingerprint != _kept_fingerprints.get(alias):
        emit_post_migrate_signal(verbosity=0, interactive=False, db=alias)
        _kept_fingerprints[alias] = kept_tables_fingerprint(alias)


@contextmanager
def flush_by_delete():
    """Transactional tests on Postgres end with database_empty(); a test that names available_apps or asks for
    serialized rollback keeps Django's flush."""
    original = TransactionTestCase._fixture_teardown

    def fixture_teardown(self) -> None:
        aliases = self._databases_names(include_mirrors=False)
        if self.available_apps is not None or self.serialized_rollback:
            return original(self)
        if any(connections[alias].vendor != "postgresql" for alias in aliases):
            return original(self)
        for alias in aliases:
            database_empty(alias)

    TransactionTestCase._fixture_teardown = fixture_teardown
    try:
        yield
    finally:
        TransactionTestCase._fixture_teardown = original

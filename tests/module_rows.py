"""Rows that every test of a module starts from, made once for the module rather than once per test.

As Django's TestCase.setUpTestData does for a class: the rows are made in a transaction that stays open while the
module's tests run, each test runs in a savepoint inside it (pytest-django's `db`) that is rolled back after the
test, and the module's transaction is rolled back after its last test. Each test gets a deep copy of the objects, so
one that changes an object in memory leaves the next the objects as they were made.

Only where no test could see a difference: every test of the module that uses the database asks for the rows, and
none commits (a transactional test would run inside the open transaction, its committed rows invisible to other
connections). Otherwise each test makes the rows itself, as before.
"""

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest
from django.db import transaction

Rows = TypeVar("Rows")

DATABASE_FIXTURES = {"db", "transactional_db", "live_server", "django_db_reset_sequences"}
COMMITTING_FIXTURES = {"transactional_db", "live_server", "django_db_reset_sequences"}


def _every_database_test_of_the_module_asks_for(request: pytest.FixtureRequest) -> bool:
    """Whether each test of this module to be run that uses the database asks for this fixture, and none commits."""
    for item in request.session.items:
        if getattr(item, "module", None) is not request.module:
            continue
        names = set(getattr(item, "fixturenames", ()))
        marker = item.get_closest_marker("django_db")
        if not names & DATABASE_FIXTURES and marker is None:
            continue
        commits = bool(names & COMMITTING_FIXTURES) or (
            marker is not None and (marker.kwargs.get("transaction") or marker.kwargs.get("reset_sequences"))
        )
        if commits or request.fixturename not in names:
            return False
    return True


@contextmanager
def module_rows(request: pytest.FixtureRequest, django_db_blocker, make: Callable[[], Rows]) -> Iterator[Rows | None]:
    """For a module-scoped fixture: what make() returned, its rows in the module's open transaction; None where
    the module's tests cannot share them (each test then makes its own: see own_rows)."""
    if not _every_database_test_of_the_module_asks_for(request):
        yield None
        return
    with django_db_blocker.unblock():
        atomic = transaction.atomic()
        atomic.__enter__()
        try:
            rows = make()
        except BaseException as error:
            atomic.__exit__(type(error), error, error.__traceback__)
            raise
    try:
        yield rows
    finally:
        with django_db_blocker.unblock():
            transaction.set_rollback(True)
            atomic.__exit__(None, None, None)


def own_rows(shared: Rows | None, make: Callable[[], Rows]) -> Rows:
    """For the test's fixture (after `db`): its copy of the module's rows, or rows of its own."""
    return copy.deepcopy(shared) if shared is not None else make()

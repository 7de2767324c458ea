import pytest

from tests.admin.scenario import World, make_world
from tests.module_rows import module_rows, own_rows


@pytest.fixture(scope="module")
def module_world(request, django_db_setup, django_db_blocker) -> World | None:
    with module_rows(request, django_db_blocker, make_world) as world:
        yield world


@pytest.fixture
def world(module_world, db) -> World:
    return own_rows(module_world, make_world)

import pytest

from tests.admin.scenario import World, make_world


@pytest.fixture
def world(db) -> World:
    return make_world()

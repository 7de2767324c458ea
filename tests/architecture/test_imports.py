"""No import cycle between product modules, and dependencies that run one way: llmops → billing → routing → tenants →
core. The graph is read from the source (tests/architecture/imports.py), imports inside functions included."""

from pathlib import Path

import pytest

from tests.architecture.imports import import_cycles, layering_violations, product_imports
from tests.servers import ROOT


def test_no_import_cycle_between_product_modules():
    cycles = import_cycles(product_imports(ROOT))
    if cycles:
        pytest.fail("import cycles:\n" + "\n".join(map(str, cycles)), pytrace=False)


def test_each_package_imports_only_the_packages_below_it():
    violations = layering_violations(product_imports(ROOT))
    if violations:
        direction = "llmops → billing → routing → tenants → core"
        pytest.fail(f"imports against {direction}:\n" + "\n".join(map(str, violations)), pytrace=False)


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_closed_inside_a_function_is_found_with_its_lines(tmp_path):
    write_tree(
        tmp_path,
        {
            "billing/__init__.py": "",
            "billing/tasks.py": "from billing.alerts import services\n",
            "billing/alerts/__init__.py": "",
            "billing/alerts/services.py": "import logging\n\n\ndef send():\n    from billing import tasks\n",
            "billing/migrations/0001_initial.py": "from billing import tasks\n",
        },
    )
    [cycle] = import_cycles(product_imports(tmp_path))
    assert cycle.modules == ["billing.alerts.services", "billing.tasks"]
    assert [str(edge) for edge in cycle.imports] == [
        "billing/alerts/services.py:5: billing.alerts.services imports billing.tasks",
        "billing/tasks.py:1: billing.tasks imports billing.alerts.services",
    ]


def test_a_relative_import_and_a_package_init_close_a_cycle(tmp_path):
    write_tree(
        tmp_path,
        {
            "routing/__init__.py": "",
            "routing/cache/__init__.py": "from .store import lookup\n",
            "routing/cache/store.py": "from routing.keys import key\n",
            "routing/keys.py": "from routing.cache.near_miss import vector\n",
            "routing/cache/near_miss.py": "",
        },
    )
    [cycle] = import_cycles(product_imports(tmp_path))
    # Importing routing.cache.near_miss runs routing/cache/__init__.py first.
    assert cycle.modules == ["routing.cache", "routing.cache.store", "routing.keys"]


def test_an_import_against_the_direction_is_named_with_its_line(tmp_path):
    write_tree(
        tmp_path,
        {
            "core/__init__.py": "",
            "core/db.py": "import os\nimport tenants.models\n",
            "tenants/__init__.py": "",
            "tenants/models.py": "from core import db\n",
            "routing/__init__.py": "",
            "routing/admin.py": "def view():\n    from llmops.gateway import snapshot\n",
            "llmops/__init__.py": "",
            "llmops/gateway/__init__.py": "",
            "llmops/gateway/snapshot.py": "from routing import admin\n",
        },
    )
    assert [str(edge) for edge in layering_violations(product_imports(tmp_path))] == [
        "core/db.py:2: core.db imports tenants.models",
        "routing/admin.py:2: routing.admin imports llmops.gateway.snapshot",
    ]

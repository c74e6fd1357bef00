"""The work pools' base job templates in deployments/: what the worker classes generate, accepted by Prefect's
work-pool create, and with no secret in a default."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from prefect.server.schemas.actions import WorkPoolCreate

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "write-base-job-templates.py"
_spec = importlib.util.spec_from_file_location("write_base_job_templates", SCRIPT)
writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(writer)

SECRET_NAME = re.compile(r"key|secret|password|token", re.IGNORECASE)
PLACEHOLDER = re.compile(r"\{\{\s*\w+\s*\}\}")


def load(pool: str) -> dict:
    return json.loads((REPO / "deployments" / f"{pool}.json").read_text())


def test_the_files_are_the_four_pools():
    assert sorted(path.stem for path in (REPO / "deployments").glob("*.json")) == sorted(writer.POOLS)


@pytest.mark.parametrize("pool, worker_type", writer.POOLS.items())
def test_each_file_is_what_its_worker_class_generates(pool, worker_type):
    if (REPO / "deployments" / f"{pool}.json").read_text() != writer.template_text(worker_type):
        pytest.fail(f"deployments/{pool}.json is not what {worker_type} generates: "
                    "run python scripts/write-base-job-templates.py", pytrace=False)


@pytest.mark.parametrize("pool, worker_type", writer.POOLS.items())
def test_each_file_is_valid_for_work_pool_create(pool, worker_type):
    """The server's model of `prefect work-pool create`: every placeholder of the job configuration a variable."""
    template = load(pool)
    created = WorkPoolCreate(name=pool, type=worker_type, base_job_template=template)
    assert created.base_job_template == template
    assert template["variables"]["type"] == "object"


def secret_looking(node, path: str = ""):
    """(path, value) of every non-empty value under a secret-looking name, placeholders aside."""
    if isinstance(node, dict):
        for name, value in node.items():
            here = f"{path}.{name}" if path else name
            if SECRET_NAME.search(name) and value not in ("", None, [], {}) and not (
                    isinstance(value, str) and PLACEHOLDER.fullmatch(value)):
                yield here, value
            else:
                yield from secret_looking(value, here)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from secret_looking(value, f"{path}[{index}]")


@pytest.mark.parametrize("pool", writer.POOLS)
def test_no_file_holds_a_secret_looking_default(pool):
    template = load(pool)
    # A default among the variable's enum is one of the choices the template offers, not a secret.
    defaults = {name: schema.get("default") for name, schema in template["variables"]["properties"].items()
                if schema.get("default") not in schema.get("enum", [])}
    assert list(secret_looking(defaults)) == []
    assert list(secret_looking(template["job_configuration"])) == []

"""deployments/systemd: each unit passes `systemd-analyze verify` (its syntax, its dependencies, that what it runs
exists), with /opt/dendro-prefect (where the units say dendro-prefect is installed) replaced by this test's own
virtual environment; and the worker units and their watchdog agree on the health endpoint. systemd does not run
as this machine's init, so the units are checked, not started: what they run (`dendro-prefect up`, `prefect worker
start --with-healthcheck`, `dendro-prefect start-subscription`) is tested where the commands are
(tests/e2e/test_up.py, tests/e2e/test_status.py)."""

from __future__ import annotations

import getpass
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNITS = REPO / "deployments" / "systemd"
INSTALLED = "/opt/dendro-prefect/bin"
# Instances to verify a template unit as (systemd-analyze needs an instance name).
INSTANCES = {"dendro-prefect-worker@.service": "local", "dendro-prefect-health@.service": "local",
             "dendro-prefect-health@.timer": "local"}


def installed_here(tmp_path: Path) -> Path:
    """The units as they would be installed, pointing at this venv, run as this user; with environment files."""
    target = tmp_path / "units"
    target.mkdir()
    for unit in UNITS.iterdir():
        text = unit.read_text().replace(INSTALLED, str(Path(sys.executable).parent))
        (target / unit.name).write_text(text.replace("User=dendro", f"User={getpass.getuser()}"))
    return target


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze on this machine")
@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.iterdir()))
def test_the_unit_verifies(tmp_path, unit):
    directory = installed_here(tmp_path)
    name = unit.replace("@.", f"@{INSTANCES[unit]}.") if unit in INSTANCES else unit
    if "@" in unit:
        (directory / name).symlink_to(directory / unit)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(directory / name)], cwd=directory,
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "/etc/dendro-prefect/" not in line]  # the environment files are the admin's, not installed here
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_every_worker_runs_the_health_endpoint_its_watchdog_asks():
    worker = (UNITS / "dendro-prefect-worker@.service").read_text()
    health = (UNITS / "dendro-prefect-health@.service").read_text()
    assert "--with-healthcheck" in worker and "--name %i@%H" in worker
    assert "EnvironmentFile=/etc/dendro-prefect/%i.env" in worker and "EnvironmentFile=/etc/dendro-prefect/%i.env" in health
    assert "$PREFECT_WORKER_WEBSERVER_PORT/health" in health and "restart dendro-prefect-worker@%i.service" in health
    assert "PartOf=dendro-prefect-worker@dendro-controller.service" in (
        UNITS / "dendro-prefect-subscription.service").read_text()

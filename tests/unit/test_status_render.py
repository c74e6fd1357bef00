"""What `dendro-prefect status` prints from a report (the report itself is read from a real server in
tests/e2e/test_status.py)."""

from __future__ import annotations

from rich.console import Console

from dendro_prefect.controller.heartbeat import utcnow
from dendro_prefect.status import ControllerStatus, StatusReport, render
from tests.unit.fakes import RESOURCE_ID


def test_jobs_running_outside_prefect_are_listed_with_the_running_jobs():
    controller = ControllerStatus(compute_resource_id=RESOURCE_ID, central_url="http://central.invalid",
                                  jobs_outside_prefect=["p1.abcdefgh"], last_contact_age_sec=None,
                                  flow_run_state="Running")
    console = Console(width=200, record=True)
    render(StatusReport(api_url=None, at=utcnow(), pools=[], workers=[], jobs=[], controllers=[controller]), console)
    text = console.export_text()
    row = next(line for line in text.splitlines() if "p1.abcdefgh" in line)
    assert "running outside Prefect" in row and "launched by another controller" in row
    assert "no running jobs" not in text


def test_each_controller_says_whether_it_is_a_compute_resource_or_a_compute_client():
    controllers = [ControllerStatus(compute_resource_id=RESOURCE_ID, central_url="http://central.invalid",
                                    last_contact_age_sec=None, flow_run_state="Running"),
                   ControllerStatus(compute_resource_id="Xk3fQ9", protocol="dendro-0.6",
                                    central_url="http://service.invalid", last_contact_age_sec=None,
                                    flow_run_state="Running")]
    console = Console(width=200, record=True)
    render(StatusReport(api_url=None, at=utcnow(), pools=[], workers=[], jobs=[], controllers=controllers), console)
    text = console.export_text()
    assert f"resource {RESOURCE_ID[:16]}…" in text and "client Xk3fQ9 " in text

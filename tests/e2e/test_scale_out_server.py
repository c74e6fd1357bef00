"""The tests of the controller and the workers that matter most, again against Prefect's own scale-out server:
two API processes behind one port and the services in a process of their own, sharing events, caches and
concurrency leases through Redis (embedded.prefect_server with `api_processes=2`). A job's calls land on
either API process, and the event a worker waits on may be published by the other one.

Real parts, as everywhere: PostgreSQL, Redis (Debian's redis-server), the Prefect server, the central
stand-in, the subscription flow, a dendro-local worker, apps written with the real dendro SDK. The test
functions are those of the modules they come from, run here with this module's `prefect_stack`."""

import pytest

from tests.e2e.test_intake import (  # noqa: F401 (collected here, against this module's stack)
    test_job_announced_twice_and_polled_again_has_one_flow_run_and_one_launch,
    test_restarted_controllers_reuse_the_flow_run_of_a_job,
)
from tests.e2e.test_local_pool import (  # noqa: F401
    test_cancelling_the_flow_run_kills_the_job_within_5_seconds,
    test_job_runs_to_completed_with_its_output_in_the_flow_run_logs,
)
from tests.fault.test_kill9 import LOCAL_CONCURRENCY, deadline_sec, kill9_scenario
from tests.stack import prefect_for_tests

# Fewer jobs than tests/fault/test_kill9.py's scenario on the single-process server (10): the kills and the
# checks are the same, the calls of each job land on either API process all the same, and the suite is shorter.
SCALE_OUT_JOBS = 8


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory):
    """This module's Prefect: the scale-out server, in place of the session's single-process one."""
    with prefect_for_tests(tmp_path_factory, "prefect-scale-out", api_processes=2, scan_job_files=False) as prefect:
        yield prefect


def test_the_server_runs_two_api_processes_and_its_services_apart(prefect_stack):
    server_log = (prefect_stack.home / "server.log").read_text()
    services_log = (prefect_stack.home / "services.log").read_text()
    assert "Starting server with 2 worker processes." in server_log
    assert "Starting services" in services_log
    # The block types come with the database: the two API processes do not race to register them.
    assert "Failed to register block" not in server_log


@pytest.mark.timeout(deadline_sec("local", SCALE_OUT_JOBS) + 480)
def test_kill9_of_controller_and_local_worker_loses_and_doubles_no_job(prefect_stack, tmp_path, sdk_bin):
    kill9_scenario(prefect_stack, tmp_path / "kill9-local", sdk_bin, jobs=SCALE_OUT_JOBS, run_method="local",
                   worker_type="dendro-local", concurrency=LOCAL_CONCURRENCY)

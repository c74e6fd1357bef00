"""A Prefect server restart (same database, same address) while a compute resource runs: the
subscription flow, the job pool's worker and a running job carry on, and new jobs still run. The test
has a Prefect server of its own, so that the session's server is not disturbed."""

from contextlib import ExitStack
from urllib.parse import urlparse

from prefect.settings import PREFECT_API_URL, temporary_settings

from dendro_prefect.embedded import deploy_project, prefect_server
from tests.conftest import create_letter_count_job
from tests.stack import (
    PrefectStack,
    final_flow_run,
    finished_job,
    prefect_api,
    running_controller,
    wait_for,
)


def test_jobs_run_across_a_prefect_server_restart(tmp_path, sdk_bin):
    home = tmp_path / "prefect"
    with ExitStack() as server:
        api_url = server.enter_context(prefect_server(home))
        with temporary_settings({PREFECT_API_URL: api_url}):
            deploy_project(api_url, home)
            with running_controller(PrefectStack(home, api_url), tmp_path / "restart", sdk_bin) as controller:
                before = create_letter_count_job(controller.admin, controller.resource_id,
                                                 inputParameters=[{"name": "letter", "value": "o"},
                                                                  {"name": "delay_sec", "value": 15}])
                wait_for(lambda: controller.admin.job(before)["status"] == "running", "the first job to run")
                server.close()  # the server stops: its database stays
                assert server.enter_context(prefect_server(home, port=urlparse(api_url).port)) == api_url
                assert finished_job(controller.admin, before, timeout=120)["status"] == "completed"
                after = create_letter_count_job(controller.admin, controller.resource_id)
                assert finished_job(controller.admin, after, timeout=120)["status"] == "completed"
                assert final_flow_run(before).state.is_completed()
                assert final_flow_run(after).state.is_completed()
                assert prefect_api().read_flow_run(controller.subscription_run_id).state.is_running()

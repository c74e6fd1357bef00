"""Shared fixtures: a real stand-in central on a free loopback port, a registered compute resource,
and the real dendro SDK's virtual environment."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dendro_prefect.protocol.client import CentralClient
from dendro_prefect.protocol.signing import generate_keypair, make_resource_code
from dendro_prefect.stand_in.admin_client import StandInAdmin
from dendro_prefect.stand_in.process import running_stand_in

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
LETTER_COUNT_APP = REPO / "apps" / "letter_count"

# The secrets scan: every test report's output is checked for the session's keys and credentials (its
# asserts rewritten: tests.stack, imported below, imports it before pytest loads the plugin).
pytest.register_assert_rewrite("tests.secrets_scan")
pytest_plugins = ["tests.secrets_scan"]


@pytest.fixture(scope="session")
def sdk_bin() -> Path:
    """The bin directory of the virtual environment with the real dendro 0.2.17 SDK (made by scripts/test.sh)."""
    venv = Path(os.environ.get("DENDRO_SDK_VENV", REPO / ".venv-sdk"))
    if not (venv / "bin" / "dendro").exists():
        pytest.fail(f"no dendro SDK in {venv}: run `bash scripts/test.sh`, which creates it")
    return venv / "bin"


@pytest.fixture(scope="session")
def sdk06_bin() -> Path:
    """The bin directory of the virtual environment with the real dendro 0.6.22 SDK, which Dendro 0.6 jobs run with
    (made by scripts/test.sh)."""
    venv = Path(os.environ.get("DENDRO_SDK06_VENV", REPO / ".venv-sdk06"))
    if not (venv / "bin" / "dendro").exists():
        pytest.fail(f"no dendro 0.6.22 SDK in {venv}: run `bash scripts/test.sh`, which creates it")
    return venv / "bin"


@pytest.fixture(scope="session")
def test_output_dir() -> Path:
    """Where tests leave files for people to look at (screenshots): $DENDRO_TEST_OUTPUT if set, else the
    repository's test-output/ (ignored by git)."""
    path = Path(os.environ.get("DENDRO_TEST_OUTPUT") or REPO / "test-output")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def central(tmp_path: Path):
    with running_stand_in(tmp_path / "central") as admin:
        yield admin


@pytest.fixture
def mock_pubsub_central(tmp_path: Path):
    with running_stand_in(tmp_path / "central", mock_pubsub=True) as admin:
        yield admin


@dataclass
class Resource:
    id: str
    private_key: str
    client: CentralClient


def register(admin: StandInAdmin) -> Resource:
    resource_id, private_key = generate_keypair()
    admin.approve(resource_id, make_resource_code(private_key))
    return Resource(resource_id, private_key, CentralClient(admin.url, resource_id, private_key, retry_deadline=5))


@pytest.fixture
def resource(central: StandInAdmin) -> Resource:
    return register(central)


def letter_count_spec() -> dict:
    return json.loads((LETTER_COUNT_APP / "spec.json").read_text())


def create_letter_count_job(admin: StandInAdmin, resource_id: str, text: str = "hello dendro world",
                            letter: str = "o", **overrides) -> str:
    project_id = admin.create_project("test")
    admin.upload_file(project_id, "in.txt", text.encode())
    request = {
        "computeResourceId": resource_id,
        "projectId": project_id,
        "processorName": "letter_count",
        "inputFiles": [{"name": "input", "fileName": "in.txt"}],
        "outputFiles": [{"name": "output", "fileName": "out.json"}],
        "inputParameters": [{"name": "letter", "value": letter}],
        "processorSpec": letter_count_spec()["processors"][0],
        "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 60},
        "runMethod": "local",
    }
    request.update(overrides)
    return admin.create_job(request)


COUNT_STARTS_APP = FIXTURES / "apps" / "count_starts"


def count_starts_app() -> dict:
    """A short app of the real SDK without an image (tests/fixtures/apps/count_starts), as an app entry."""
    return {"name": "count_starts", "specUri": (COUNT_STARTS_APP / "spec.json").as_uri()}


def create_count_starts_job(admin: StandInAdmin, resource_id: str, **overrides) -> str:
    spec = json.loads((COUNT_STARTS_APP / "spec.json").read_text())["processors"][0]
    request = {
        "computeResourceId": resource_id, "projectId": admin.create_project("count-starts"),
        "processorName": "count_starts", "processorSpec": spec, "inputFiles": [], "outputFiles": [],
        "inputParameters": [{"name": "min_sec", "value": 0}, {"name": "max_sec", "value": 0}],
        "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 0.5, "timeSec": 60}, "runMethod": "local",
    }
    request.update(overrides)
    return admin.create_job(request)


# With PYTEST_PROCESSES=N (scripts/test.sh; 4 by default) the suite runs in N processes (pytest-xdist): a
# module's tests stay together (its module-scoped controller starts once), and the tests that run jobs on the
# one-node Slurm cluster (2 CPUs) share one process, so that their jobs do not queue behind each other's: the
# modules of SLURM_MODULES, and the SLURM_TESTS of modules whose other tests need no Slurm (nor its process).
SLURM_MODULES = {"test_slurm_pool", "test_slurm_docker", "test_slurm_packing", "test_spike_sorting", "test_v06_slurm"}
SLURM_TESTS = {"test_kill9_of_controller_and_slurm_worker_loses_and_doubles_no_job"}
# The longest scopes, longest first (minutes of a fresh clone's run on 2 cores, four processes: Slurm 9, reconcile
# 8, scale-out 5.5, README 3-5, outages 4, Kubernetes and AWS Batch 3.5 each, up 3, kill -9 local 2.5): they start
# first, so that none starts last and runs alone (pytest-xdist would order scopes by their number of tests, which
# puts a long module of one or two tests at the end). The docker-compose test is not among them: it waits for
# its images, which scripts/test.sh builds meanwhile.
LONGEST_SCOPES = ["slurm", "tests/fault/test_reconcile.py", "tests/e2e/test_scale_out_server.py",
                  "tests/e2e/test_readme_commands.py", "tests/fault/test_outages.py", "tests/e2e/test_kubernetes_pool.py",
                  "tests/e2e/test_aws_batch_pool.py", "tests/e2e/test_up.py", "tests/fault/test_kill9.py"]


def scope_of(nodeid: str) -> str:
    module, _, test = nodeid.partition("::")
    return "slurm" if Path(module).stem in SLURM_MODULES or test in SLURM_TESTS else module


def pytest_collection_modifyitems(config, items) -> None:
    """The longest scopes first, the rest in their order (every process collects alike: the order is the same)."""
    rank = {scope: index for index, scope in enumerate(LONGEST_SCOPES)}
    items.sort(key=lambda item: rank.get(scope_of(item.nodeid), len(rank)))


def pytest_configure(config) -> None:
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # the collection's order (above), not the scopes' sizes


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ModuleScheduling(config, log)


BUSY_SEC: dict[str, float] = {}  # each pytest process's time in tests (setup, call, teardown), seen by the controller


def pytest_runtest_logreport(report) -> None:
    node = getattr(report, "node", None)  # set on the reports the xdist controller receives
    if node is not None:
        BUSY_SEC[node.gateway.id] = BUSY_SEC.get(node.gateway.id, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if BUSY_SEC:
        terminalreporter.write_line("time in tests per pytest process: " + ", ".join(
            f"{worker} {seconds:.0f} s" for worker, seconds in sorted(BUSY_SEC.items())))


def process_alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not). /proc answers ESRCH for one that goes while it is read."""
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def parent_pids() -> dict[int, int]:
    """Each process's parent, from /proc (a process that goes while it is read is left out)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return parents


def wait_for(condition, what: str, timeout: float = 60.0, interval: float = 0.25):
    """Poll `condition` until it returns something truthy (and return that); fail at the deadline. Four
    times a second: most conditions ask a server, which on this 2-core machine takes CPU from what the
    test waits for."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last value: {value!r}")
        time.sleep(interval)


# The real-parts stack (Prefect server, controllers, docker) serves the e2e and the fault suites alike:
# imported here, its session fixtures exist once per test session.
from tests.stack import controller, docker_client, hello_world_image, prefect_stack  # noqa: E402,F401

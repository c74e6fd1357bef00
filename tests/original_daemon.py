"""The original Dendro daemon (`dendro start-compute-resource` of dendro 0.2.17) run against a stand-in central:
for bench/side_by_side.py (the same jobs through both) and tests/e2e/test_switch_from_daemon.py (a lab's switch).

What it needs to run against the stand-in, written into its work directory:

- PubSub. The daemon subscribes with the pubnub SDK at PubNub's default origin: it reads only the key,
  channel and user of `pubsub_subscription`. PubNub cannot be reached from here, and without PubSub the
  daemon polls `unfinished_jobs` once every 600 s (and once at its start). The pubnub SDK's own hook, the
  environment variable PUBNUB_REQUEST_HANDLER, loads a request handler (written here) that sends the SDK's
  requests to the stand-in's PubNub-compatible endpoint instead, so the daemon runs its own code path: a hint,
  a poll of `unfinished_jobs`, launches.
- DENDRO_URL. The daemon writes DENDRO_URL=https://dendro.vercel.app into every job's environment, on top of
  its own environment, which it hands on whole. The app's executable is a wrapper that restores the
  stand-in's URL from STAND_IN_CENTRAL_URL, a variable of the daemon's environment.
- `jobs/` exists before the daemon starts: its cleanup process spins on a core until it does.

Its processes, and its jobs' (sessions of their own), carry a mark in their environment (VAR=value), by
which whatever outlives it is found and stopped.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from dendro_prefect.stand_in.admin_client import StandInAdmin

NODE_FILE = ".dendro-compute-resource-node.yaml"
HANDLER_MODULE = "original_daemon_pubnub_origin"
LISTENING = "original daemon: PubSub long-poll"  # the handler's line once the SDK's handshake is done
DAEMON_RUNNING = "Compute resource is running"  # the daemon's line after its first round
ORIGINAL_CAP = 2  # the original's max_simultaneous_local_jobs (compute_resource/JobManager.py)

PUBNUB_HANDLER = f'''"""Written by tests/original_daemon.py, loaded by the original daemon's pubnub SDK through its
PUBNUB_REQUEST_HANDLER hook: the SDK's requests go to the stand-in's PubNub-compatible endpoint
(ORIGINAL_DAEMON_PUBNUB_ORIGIN) instead of PubNub's hosts, which the daemon cannot be told about."""

import os
import sys
from urllib.parse import parse_qs

from pubnub.request_handlers.httpx import HttpxRequestHandler


class StandInOrigin(HttpxRequestHandler):
    listening = False

    def __init__(self, pubnub):
        pubnub.config.origin = os.environ["ORIGINAL_DAEMON_PUBNUB_ORIGIN"]
        pubnub.config.ssl = False
        if pubnub.base_origin != pubnub.config.origin:
            raise RuntimeError("the pubnub SDK kept PubNub's origin (a locked configuration?)")
        super().__init__(pubnub)

    def threaded_request(self, endpoint_name, platform_options, endpoint_call_options, callback, cancellation_event):
        """Says once that the SDK long-polls from a timetoken: its handshake is done, so nothing published
        from now on is lost (the stand-in keeps what comes between two long-polls)."""
        if not StandInOrigin.listening and parse_qs(endpoint_call_options.query_string).get("tt", ["0"]) != ["0"]:
            StandInOrigin.listening = True
            print("{LISTENING} at", self.pubnub.config.origin, file=sys.stderr, flush=True)
        return super().threaded_request(endpoint_name, platform_options, endpoint_call_options, callback,
                                        cancellation_event)
'''



def write_node(node: Path, resource_id: str, private_key: str) -> Path:
    """The original's configuration file in its working directory (YAML; JSON is YAML too), 0600: it
    holds the private key. Returns its path."""
    node.mkdir(parents=True, exist_ok=True)
    config = {"COMPUTE_RESOURCE_ID": resource_id, "COMPUTE_RESOURCE_PRIVATE_KEY": private_key,
              "CONTAINER_METHOD": "", "DEFAULT_JOB_RUN_METHOD": "local", "AVAILABLE_JOB_RUN_METHODS": "local"}
    fd = os.open(node / NODE_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle)
    (node / "jobs").mkdir(exist_ok=True)
    return node / NODE_FILE


def write_app(directory: Path, app_dir: Path, sdk_bin: Path) -> Path:
    """The app's spec with a wrapper as its executable (the original runs it as it is, in the job's working
    directory, so it must be absolute); returns the spec's path."""
    wrapper = directory / f"{app_dir.name}.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# The original daemon sets DENDRO_URL=https://dendro.vercel.app for every job; the stand-in's URL\n"
        "# comes back from STAND_IN_CENTRAL_URL, which the daemon's environment hands on to the job.\n"
        'export DENDRO_URL="$STAND_IN_CENTRAL_URL"\n'
        f"exec {shlex.quote(str(sdk_bin / 'python3'))} {shlex.quote(str(app_dir / 'main.py'))}\n")
    wrapper.chmod(0o755)
    spec = json.loads((app_dir / "spec.json").read_text())
    spec["appExecutable"] = spec["executable"] = str(wrapper)
    spec_file = directory / f"{app_dir.name}.spec.json"
    spec_file.write_text(json.dumps(spec, indent=4))
    return spec_file


def daemon_env(admin: StandInAdmin, sdk_bin: Path, mark: str, handler_dir: Path | None,
               extra: dict[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment: the stand-in's URL, the SDK's bin first on PATH (the job's SDK runs
    `dendro internal-job-monitor`), unbuffered output (its log shows when it is ready), the mark, and
    with PubSub the request handler of the pubnub SDK."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VIRTUAL_ENV", "PYTHON"))}
    name, value = mark.split("=", 1)
    env.update({"DENDRO_URL": admin.url, "STAND_IN_CENTRAL_URL": admin.url, "PYTHONUNBUFFERED": "1", name: value,
                "PATH": f"{sdk_bin}{os.pathsep}{os.environ['PATH']}", **(extra or {})})
    if handler_dir is not None:
        env.update({"PYTHONPATH": str(handler_dir), "PUBNUB_REQUEST_HANDLER": f"{HANDLER_MODULE}.StandInOrigin",
                    "ORIGINAL_DAEMON_PUBNUB_ORIGIN": urlsplit(admin.url).netloc})
    return env


def wait_ready(process: subprocess.Popen, log: Path, admin: StandInAdmin, resource_id: str, line: str,
               timeout_sec: float = 120.0) -> None:
    """Up means: it reported its apps' spec and said `line` (listening on PubSub, or its first round done)."""
    deadline = time.monotonic() + timeout_sec
    while admin.resource(resource_id)["spec"] is None or line not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            state = (f"exited with {process.returncode}" if process.returncode is not None
                     else f"is not ready after {timeout_sec:g} s")
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the original daemon {state}; its log ends with:\n{tail}")
        time.sleep(0.2)


@contextmanager
def original_daemon(node: Path, admin: StandInAdmin, resource_id: str, sdk_bin: Path, pubsub: bool, mark: str,
                    env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """`dendro start-compute-resource` (of `sdk_bin`, dendro[compute_resource]==0.2.17) in `node`, which holds
    its configuration (write_node), until it is up; stopped (its process group) after. Its jobs run on."""
    handler_dir = None
    if pubsub:
        handler_dir = node / "pubnub-handler"
        handler_dir.mkdir(exist_ok=True)
        (handler_dir / f"{HANDLER_MODULE}.py").write_text(PUBNUB_HANDLER)
    log_path = node / "daemon.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sdk_bin / "dendro", "start-compute-resource"], cwd=node, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env=daemon_env(admin, sdk_bin, mark, handler_dir, env))
    try:
        wait_ready(process, log_path, admin, resource_id, LISTENING if pubsub else DAEMON_RUNNING)
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    """The daemon, its PubNub thread and its cleanup process (one process group: started in a session of its
    own); its jobs have sessions of their own (see stop_leftovers)."""
    for sig, wait_sec in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait_sec)
            return
        except subprocess.TimeoutExpired:
            pass


def processes_marked(mark: str) -> list[int]:
    """PIDs of the processes whose environment holds `mark` (VAR=value). The daemon and the workers
    hand their environment on to every job, and the jobs run in sessions of their own (the original
    launches them with start_new_session), so a process group would miss them; the mark does not."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark.encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def stop_leftovers(mark: str, what: str, grace_sec: float = 5.0) -> None:
    """The SDK's job monitors end within a second of their job; whatever carries the mark after
    `grace_sec` is stopped (SIGTERM, then SIGKILL) and reported."""
    deadline = time.monotonic() + grace_sec
    while (pids := processes_marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not pids:
        return
    print(f"note: {len(pids)} processes of {what} were still running after it stopped; stopping them",
          file=sys.stderr, flush=True)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)
        if not (pids := processes_marked(mark)):
            return

"""Start the stand-in API server for a test and stop it, and everything it started, afterwards; plus the kubeconfig
the official client loads and small admin calls (evict, compact, raw listings) that tests use to check outcomes."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import requests
import yaml

from .process import kill_leftovers

REPO_ROOT = Path(__file__).resolve().parents[2]
OPTIONS = {"cpu": 4, "memory": "8Gi", "gpus": 0, "missing_images": ()}


@dataclass
class ApiServer:
    url: str
    kubeconfig: Path
    token: str = field(repr=False)  # a failure report shows the fixture: never its credential
    workdir: Path

    def _call(self, method: str, path: str) -> object:
        response = requests.request(method, f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"},
                                    timeout=10)
        response.raise_for_status()
        return response.json()

    def namespace_uid(self, name: str) -> str:
        """kube-system's uid is what tools take as the cluster's identity."""
        return self._call("GET", f"/api/v1/namespaces/{name}")["metadata"]["uid"]

    def evict(self, namespace: str, pod_name: str) -> dict:
        return self._call("POST", f"/stand-in/namespaces/{namespace}/pods/{pod_name}/evict")

    def compact(self) -> None:
        self._call("POST", "/stand-in/compact")

    def jobs(self, namespace: str) -> list[dict]:
        return self._call("GET", f"/stand-in/namespaces/{namespace}/jobs")

    def secrets(self, namespace: str) -> list[dict]:
        return self._call("GET", f"/stand-in/namespaces/{namespace}/secrets")

    def pods(self, namespace: str) -> list[dict]:
        return self._call("GET", f"/stand-in/namespaces/{namespace}/pods")

    def events(self, namespace: str) -> list[dict]:
        return self._call("GET", f"/stand-in/namespaces/{namespace}/events")

    def processes(self) -> list[int]:
        """PIDs of pod processes (and their children in the same process group) still alive."""
        return self._call("GET", "/stand-in/processes")


def write_kubeconfig(path: Path, url: str, token: str) -> Path:
    config = {"apiVersion": "v1", "kind": "Config", "preferences": {},
              "clusters": [{"name": "stand-in", "cluster": {"server": url}}],
              "users": [{"name": "stand-in", "user": {"token": token}}],
              "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "stand-in",
                                                            "namespace": "default"}}],
              "current-context": "stand-in"}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def wait_until_ready(process: subprocess.Popen, port_file: Path, timeout: float, log_file: Path) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the stand-in API server exited with {process.returncode}; see {log_file}")
        port = port_file.read_text().strip() if port_file.exists() else ""
        if port.isdigit():
            url = f"http://127.0.0.1:{port}"
            try:
                if requests.get(f"{url}/readyz", timeout=1).ok:
                    return url
            except requests.ConnectionError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"the stand-in API server did not answer within {timeout} s; see {log_file}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def running_api_server(workdir: Path, startup_timeout: float = 30.0, **options) -> Iterator[ApiServer]:
    """Run the stand-in in a subprocess (options: cpu, memory, gpus, missing_images) for the `with` block."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise TypeError(f"unknown stand-in options: {sorted(unknown)}")
    chosen = {**OPTIONS, **options}
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port_file, log_file = workdir / "apiserver.port", workdir / "apiserver.log"
    port_file.unlink(missing_ok=True)
    token = secrets.token_urlsafe(24)
    argv = [sys.executable, "-m", "tests.k8s_stand_in", "--workdir", str(workdir), "--port-file", str(port_file),
            "--cpu", str(chosen["cpu"]), "--memory", str(chosen["memory"]), "--gpus", str(chosen["gpus"])]
    for image in sorted(chosen["missing_images"]):
        argv += ["--missing-image", image]
    with open(log_file, "ab") as log:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, env={**os.environ, "K8S_STAND_IN_TOKEN": token},
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = wait_until_ready(process, port_file, startup_timeout, log_file)
        yield ApiServer(url, write_kubeconfig(workdir / "kubeconfig", url, token), token, workdir)
    finally:
        stop(process)
        kill_leftovers(workdir / "pids")

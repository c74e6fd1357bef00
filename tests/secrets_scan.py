"""A secrets scan of the test session: no compute-resource key, job key or cloud credential may show up where
it does not belong.

Which secrets: those the tests' setup records (`record_secret`), plus those found in pytest's temporary tree
(`discover_secrets`): every job's private key (and DANDI API key) in the central stand-ins' stores, the
compute-resource keys of the `.dendro_compute_resource.json` files, the tokens of the kubeconfigs, and the job
keys the dendro SDK itself prints into its job's own output. Discovery is cumulative over the session, so a
job deleted at the central later is still checked.

Where they must not be:
- Prefect (`assert_no_secrets_leaked`, run by the `prefect_stack` fixture before its server stops): every log
  line, every flow run (parameters, job variables, state messages of its whole history), every deployment's job
  variables, every work pool's base job template, every variable, and every block document as the API returns
  it without secrets (whose secret fields must come back obfuscated);
- files: everything under the job directories (`dendro-jobs/`: rendered Slurm batch and pack scripts, exit
  codes, ...) but the legitimate holders `is_legitimate_holder` names, and the workers' and controllers' log
  files in the Prefect home;
- Kubernetes: every Job and Pod the API-server stand-in held (`kubernetes_objects_scanned`; Secrets hold the key
  legitimately and are not looked at);
- test output: each test report's captured stdout/stderr/log and failure text, scanned as it is reported and
  again at the end of the session with every secret then known (this module is a pytest plugin, registered by
  the root conftest).

A finding names its kind, where it was found and the secret's first 4 characters, never the secret. It fails
the session: the fixture's teardown raises, and the session's exit status is made non-zero.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest
import requests
import yaml

MIN_SECRET_LENGTH = 16
PAGE = 200  # Prefect's default (and largest) page of the filter endpoints
OBFUSCATED_PREFIX = "****"  # how Prefect returns a secret field when asked without secrets

JOB_ROOT_NAME = "dendro-jobs"  # the workers' default job_root, relative to their working directory
CENTRAL_STORE_NAME = "central.sqlite"
# The stand-in's stores (0.2's and 0.6's): table -> secret field of its documents -> kind.
STORE_SECRETS = {
    CENTRAL_STORE_NAME: {"jobs": {"jobPrivateKey": "job-key", "dandiApiKey": "dandi-api-key"}},
    "service-v06.sqlite": {"jobs": {"jobPrivateKey": "job-key"},
                           "compute_clients": {"computeClientPrivateKey": "compute-client-key"}},
}
# A configuration file's private key, whichever protocol it is of.
CONFIG_KEYS = {"compute_resource_private_key": "compute-resource-key", "compute_client_private_key": "compute-client-key"}
CONFIG_FILE_NAME = ".dendro_compute_resource.json"
KUBECONFIG_NAME = "kubeconfig"
# The dendro SDK (0.2.17) logs "Running <app> (Job ID: ...)) (Job private key: <key>)" to its stdout and to its
# debug log: the job's own files, which are a source of job keys here (and excluded from the scan below).
SDK_KEY_LINE = re.compile(r"\(Job private key: ([0-9A-Za-z]{16,})\)")  # 0.2's are hex, 0.6's letters and digits
SDK_OUTPUT_NAMES = ("stdout.log", "dendro-job.log")


def is_legitimate_holder(relative: Path) -> str | None:
    """Why a file under a job directory may hold the job's key, or None when it must not. Exactly these:"""
    parts = relative.parts
    if "secrets" in parts:
        # JobDirectory.secrets (mode 0700): the key file (and container env file) a launcher passes the key in.
        return "the job directory's secrets/ (the key file the launcher hands the app)"
    if parts[-1] == "stdout.log" and len(parts) == 2:
        # JobDirectory.stdout, `<job id>/stdout.log`: the app's own stdout, where the SDK prints its key (above),
        # until the job's end redacts it (a job a test left running keeps it; job_directory_after_its_end checks).
        return "the app's own stdout (the dendro SDK prints the job key; redacted at the job's end)"
    if parts[-2:] == ("_dendro", "dendro-job.log"):
        # The SDK's own debug log in its working directory: it writes the same line as to its stdout (the same).
        return "the dendro SDK's own debug log (it writes the job key; redacted at the job's end)"
    return None


# Block document fields that hold a credential in clear by the block type's own design (not a SecretStr), so
# the API returns them as they are: tolerated there only (and counted in the summary), checked everywhere else.
CLEAR_BLOCK_FIELDS = {
    # An AWS access key id identifies a key (AWS does not treat it as secret); prefect-aws declares it a str.
    ("aws-credentials", "aws_access_key_id"): "aws-access-key-id",
    # prefect-kubernetes (0.8) declares KubernetesClusterConfig.config a plain Dict: the kubeconfig, tokens
    # included, is readable by anyone who can read blocks. Upstream's design, not ours to change here.
    ("kubernetes-cluster-config", "config"): "kube-token",
}


@dataclass(frozen=True)
class Secret:
    value: str
    kind: str

    @property
    def preview(self) -> str:
        return self.value[:4] + "…"

    def variants(self) -> list[tuple[str, str]]:
        """The forms it may be written in: as is, and base64 (Kubernetes Secret data, env files)."""
        encoded = base64.b64encode(self.value.encode()).decode()
        return [(self.value, ""), (encoded, " (base64)")]


@dataclass(frozen=True)
class Finding:
    kind: str
    location: str
    preview: str

    def __str__(self) -> str:
        return f"{self.kind} {self.preview!r} found in {self.location}"


@dataclass
class _SessionState:
    recorded: dict[str, str] = field(default_factory=dict)
    discovered: dict[str, str] = field(default_factory=dict)
    roots: list[Path] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    tolerated: list[str] = field(default_factory=list)
    discovered_at: float = 0.0
    outputs: dict[tuple[str, str], str] = field(default_factory=dict)


STATE = _SessionState()
_lock = threading.Lock()
_CONFIG: list[pytest.Config] = []  # the pytest session's config, once this module runs as its plugin


# --- which secrets ----------------------------------------------------------------------------------------------

def record_secret(value: str, kind: str) -> None:
    """Remember a secret the test setup created, to be looked for everywhere at the end."""
    if len(value) < MIN_SECRET_LENGTH:
        raise ValueError(f"a {kind} of {len(value)} characters cannot be scanned for without false alarms; "
                         f"make test secrets at least {MIN_SECRET_LENGTH} characters long and random")
    with _lock:
        STATE.recorded[value] = kind


def record_central_jobs(data_dir: Path) -> None:
    """Remember the job keys of a stand-in's store now (before a job is deleted from it, say)."""
    found = _store_secrets(data_dir / CENTRAL_STORE_NAME)
    with _lock:
        STATE.discovered.update(found)


def add_root(root: Path) -> None:
    """A directory whose secrets `known_secrets` discovers (pytest's base temporary directory)."""
    root = Path(root).resolve()
    with _lock:
        if root not in STATE.roots:
            STATE.roots.append(root)


def _walk_files(root: Path) -> Iterator[Path]:
    for directory, _dirs, files in os.walk(root):
        for name in files:
            yield Path(directory) / name


def _store_secrets(path: Path) -> dict[str, str]:
    """The secrets in a stand-in's store: its documents' secret fields (STORE_SECRETS)."""
    found: dict[str, str] = {}
    if not path.exists():
        return found
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = [(fields, document) for table, fields in STORE_SECRETS[path.name].items()
                    for (document,) in connection.execute(f"SELECT document FROM {table}").fetchall()]
        finally:
            connection.close()
    except sqlite3.Error:
        return found  # a store being created; the next discovery reads it
    for fields, document in rows:
        try:
            item = json.loads(document)
        except ValueError:
            continue
        if not isinstance(item, dict):
            continue
        for key, kind in fields.items():
            if isinstance(item.get(key), str) and len(item[key]) >= MIN_SECRET_LENGTH:
                found[item[key]] = kind
    return found


def discover_secrets(root: Path) -> dict[str, str]:
    """The secrets the tests' stand-ins and controllers left under `root`: value -> kind."""
    found: dict[str, str] = {}
    for path in _walk_files(root):
        try:
            if path.name in STORE_SECRETS:
                found.update(_store_secrets(path))
            elif path.name == CONFIG_FILE_NAME:
                document = json.loads(path.read_text())
                for field, kind in CONFIG_KEYS.items():
                    if isinstance(document.get(field), str) and len(document[field]) >= MIN_SECRET_LENGTH:
                        found[document[field]] = kind
            elif path.name == KUBECONFIG_NAME:
                for user in (yaml.safe_load(path.read_text()) or {}).get("users") or []:
                    credentials = (user or {}).get("user") or {}
                    for name in ("token", "password", "client-key-data"):
                        if isinstance(credentials.get(name), str) and len(credentials[name]) >= MIN_SECRET_LENGTH:
                            found[credentials[name]] = "kube-token" if name == "token" else f"kube-{name}"
            elif path.name in SDK_OUTPUT_NAMES:
                for match in SDK_KEY_LINE.finditer(path.read_text(errors="replace")):
                    found.setdefault(match.group(1), "job-key")
        except (OSError, ValueError, yaml.YAMLError, AttributeError):
            continue  # a file being written; the next discovery reads it
    return found


def known_secrets(max_age: float = 0.0) -> list[Secret]:
    """Every secret recorded or discovered so far (discovery is refreshed when older than `max_age` seconds)."""
    if _CONFIG:  # in a pytest session: its temporary tree, where every fixture's stand-ins and workers write
        root = _basetemp(_CONFIG[0])
        if root is not None:
            add_root(root)
    if time.monotonic() - STATE.discovered_at >= max_age:
        for root in list(STATE.roots):
            found = discover_secrets(root)
            with _lock:
                STATE.discovered.update(found)
        STATE.discovered_at = time.monotonic()
    with _lock:
        merged = {**STATE.discovered, **STATE.recorded}
    return [Secret(value, kind) for value, kind in merged.items()]


def describe(secrets: list[Secret]) -> str:
    counts: dict[str, int] = {}
    for secret in secrets:
        counts[secret.kind] = counts.get(secret.kind, 0) + 1
    return f"{len(secrets)} secrets ({', '.join(f'{n} {kind}' for kind, n in sorted(counts.items())) or 'none'})"


# --- scanning -------------------------------------------------------------------------------------------------

def scan_text(text: str, location: str, secrets: list[Secret], numbered: bool = True) -> list[Finding]:
    """Findings in one text; with `numbered`, the location names the line."""
    findings = []
    for secret in secrets:
        for variant, how in secret.variants():
            if variant not in text:
                continue
            if numbered:
                for number, line in enumerate(text.splitlines(), 1):
                    if variant in line:
                        findings.append(Finding(secret.kind + how, f"{location}:{number}", secret.preview))
            else:
                findings.append(Finding(secret.kind + how, location, secret.preview))
    return findings


def scan_lines(lines: list[tuple[str, str]], secrets: list[Secret]) -> list[Finding]:
    """Findings in many (location, text) pairs: one search of their joined text per secret, located on a hit."""
    return [finding for finding, _ in _scan_pairs(lines, secrets, lambda location: location)]


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, text) of every string in a JSON-like value, keys included."""
    if isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            yield child + " (key)", str(key)
            yield from _leaves(item, child)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    elif value is not None:
        yield path, value if isinstance(value, str) else json.dumps(value, default=str)


def scan_object(value: Any, location: str, secrets: list[Secret],
                tolerated: dict[str, str] | None = None) -> list[Finding]:
    """Findings in a JSON-like object, located by field path. `tolerated`: a top-level field -> the one kind of
    secret that may be in it (noted in the summary, not a finding)."""
    leaves = list(_leaves(value))
    findings = []
    for finding, path in _scan_pairs(leaves, secrets, lambda path: f"{location}, field {path}"):
        top = re.split(r"[.\[ ]", path, maxsplit=1)[0]
        if tolerated and tolerated.get(top) == finding.kind:
            STATE.tolerated.append(f"{finding} (in clear by the block type's design)")
        else:
            findings.append(finding)
    return findings


def _scan_pairs(pairs: list[tuple[str, str]], secrets: list[Secret], where) -> Iterator[tuple[Finding, str]]:
    joined = "\n".join(text for _, text in pairs)
    for secret in secrets:
        for variant, how in secret.variants():
            if variant in joined:
                for key, text in pairs:
                    if variant in text:
                        yield Finding(secret.kind + how, where(key), secret.preview), key


def job_dir_files(root: Path) -> Iterator[tuple[Path, str | None]]:
    """Every file under a job root (`dendro-jobs/`) below `root`, with why it may hold a key (or None)."""
    for directory, dirs, _files in os.walk(root):
        if JOB_ROOT_NAME in dirs:
            job_root = Path(directory) / JOB_ROOT_NAME
            for path in _walk_files(job_root):
                yield path, is_legitimate_holder(path.relative_to(job_root))
            dirs.remove(JOB_ROOT_NAME)


def scan_files(paths: Iterable[Path], secrets: list[Secret], root: Path | None = None) -> tuple[list[Finding], int]:
    """Findings in text files (by line), and how many files were read. Binary files (a NUL byte in their first
    8 KiB: the recordings and sortings of spike-sorting jobs, hundreds of MB) are not read: nothing of ours writes
    them, and searching each for every secret took most of a loaded session's teardown."""
    findings, count = [], 0
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if b"\0" in data[:8192]:
            continue
        text = data.decode("utf-8", errors="replace")
        count += 1
        shown = path.relative_to(root) if root and path.is_relative_to(root) else path
        findings += scan_text(text, f"file {shown}", secrets)
    return findings, count


def check_block_document(document: dict, secrets: list[Secret]) -> list[Finding]:
    """A block document as the API returns it without secrets: its secret fields obfuscated, and no secret
    elsewhere in it (but a block type's own clear credential fields, CLEAR_BLOCK_FIELDS)."""
    slug = (document.get("block_type") or {}).get("slug") or document.get("block_type_name") or "?"
    location = f"block document {slug}/{document.get('name') or document.get('id')}"
    data = document.get("data") or {}
    findings = []
    schema_fields = (document.get("block_schema") or {}).get("fields") or {}
    for path in schema_fields.get("secret_fields") or []:
        for value in _at_path(data, path.split(".")):
            if value is not None and not (isinstance(value, str) and value.startswith(OBFUSCATED_PREFIX)):
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                findings.append(Finding("secret field not obfuscated", f"{location}, field {path}", text[:4] + "…"))
    tolerated = {name: kind for (block, name), kind in CLEAR_BLOCK_FIELDS.items() if block == slug}
    return findings + scan_object(data, location, secrets, tolerated)


def _at_path(value: Any, parts: list[str]) -> Iterator[Any]:
    if not parts:
        yield value
    elif isinstance(value, dict):
        keys = value.keys() if parts[0] == "*" else [parts[0]] if parts[0] in value else []
        for key in keys:
            yield from _at_path(value[key], parts[1:])


# --- Prefect --------------------------------------------------------------------------------------------------

async def scan_prefect(secrets: list[Secret]) -> tuple[list[Finding], dict[str, int]]:
    """Everything of the current Prefect API (PREFECT_API_URL) where a secret must not be."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTimestamp
    from prefect.client.schemas.objects import BlockDocument
    from prefect.client.schemas.sorting import FlowRunSort, LogSort

    findings: list[Finding] = []
    counts = dict.fromkeys(("log lines", "flow runs", "flow-run states", "deployments", "work pools",
                            "block documents", "variables"), 0)
    async with get_client() as client:
        # Pages by timestamp (at or after the last one seen; logs seen already are skipped by id): offsets over a
        # sort with ties could skip lines.
        seen: set = set()
        after = None
        while True:
            log_filter = LogFilter(timestamp=LogFilterTimestamp(after_=after)) if after else None
            page = await client.read_logs(log_filter=log_filter, limit=PAGE, sort=LogSort.TIMESTAMP_ASC)
            new = [log for log in page if log.id not in seen]
            past_instant = False
            if not new:
                if len(page) < PAGE:
                    break
                # A full page, all seen: more than a page of lines at the instant `after`. Read the rest of them
                # by offset, then go on from just past it.
                new, past_instant = await _logs_at(client, after, seen), True
            seen.update(log.id for log in new)
            after = max(log.timestamp for log in page + new)
            if past_instant:
                after += timedelta(microseconds=1)
            counts["log lines"] += len(new)
            findings += scan_lines([(f"Prefect log line of flow run {log.flow_run_id} at {log.timestamp} "
                                     f"(logger {log.name})", log.message) for log in new], secrets)

        offset = 0
        while page := await client.read_flow_runs(limit=PAGE, offset=offset, sort=FlowRunSort.ID_DESC):
            offset += len(page)
            for flow_run in page:
                counts["flow runs"] += 1
                where = f"flow run '{flow_run.name}' {flow_run.id}"
                findings += scan_object(flow_run.model_dump(mode="json"), where, secrets)
                states = await client.read_flow_run_states(flow_run.id)
                counts["flow-run states"] += len(states)
                findings += scan_object([s.model_dump(mode="json", exclude={"data"}) for s in states],
                                        f"{where} state history", secrets)

        offset = 0
        while page := await client.read_deployments(limit=PAGE, offset=offset):
            offset += len(page)
            counts["deployments"] += len(page)
            for deployment in page:
                findings += scan_object(deployment.model_dump(mode="json"), f"deployment {deployment.name} "
                                        f"({deployment.id})", secrets)

        offset = 0
        while page := await client.read_work_pools(limit=PAGE, offset=offset):
            offset += len(page)
            counts["work pools"] += len(page)
            for pool in page:
                findings += scan_object(pool.model_dump(mode="json"), f"work pool {pool.name}", secrets)

        offset = 0
        while True:  # anonymous documents too, which the client's read_block_documents leaves out
            response = await client.request("POST", "/block_documents/filter", json={
                "block_documents": {"is_anonymous": {"eq_": None}}, "include_secrets": False,
                "limit": PAGE, "offset": offset})
            page = BlockDocument.model_validate_list(response.json())
            if not page:
                break
            offset += len(page)
            counts["block documents"] += len(page)
            for document in page:
                findings += check_block_document(document.model_dump(mode="json"), secrets)

        variables = await client.read_variables()
        counts["variables"] = len(variables)
        findings += scan_object([v.model_dump(mode="json") for v in variables], "Prefect variables", secrets)
    return findings, counts


async def _logs_at(client, instant, seen: set) -> list:
    from prefect.client.schemas.filters import LogFilter, LogFilterTimestamp

    same = LogFilter(timestamp=LogFilterTimestamp(after_=instant, before_=instant))
    logs, offset = [], 0
    while page := await client.read_logs(log_filter=same, limit=PAGE, offset=offset):
        offset += len(page)
        logs += [log for log in page if log.id not in seen]
    return logs


def assert_no_secrets_leaked(prefect_home: Path, root: Path, job_files: bool = True) -> None:
    """The check at the end of a Prefect server's life (it must still run): fails naming every finding.
    `job_files`: also every job-directory file under `root` (a stack whose jobs' directories another stack's
    check reads later, on the same root, leaves them to it)."""
    add_root(root)
    secrets = known_secrets()
    started = time.monotonic()
    findings, counts = asyncio.run(scan_prefect(secrets))
    log_files = sorted(Path(prefect_home).glob("*.log"))
    job_files = [path for path, legitimate in job_dir_files(root) if legitimate is None] if job_files else []
    file_findings, file_count = scan_files(log_files + job_files, secrets, root)
    findings += file_findings
    figure = (f"secrets scan: {describe(secrets)} checked against "
              f"{', '.join(f'{n} {what}' for what, n in counts.items())}, {len(log_files)} worker/controller/server "
              f"log files and {len(job_files)} job-directory files ({file_count} read) in "
              f"{time.monotonic() - started:.1f} s: {len(findings)} found")
    _report(findings, figure)
    print(figure)
    assert not findings, _failure_message(findings, "Prefect, the job directories or the workers' logs")


def _report(findings: list[Finding], figure: str) -> None:
    with _lock:
        STATE.figures.append(figure)
        STATE.findings.extend(f for f in findings if f not in STATE.findings)


def _failure_message(findings: list[Finding], where: str) -> str:
    shown = "\n".join(f"  - {finding}" for finding in findings[:50])
    more = f"\n  ... and {len(findings) - 50} more" if len(findings) > 50 else ""
    return f"{len(findings)} secret(s) found in {where}:\n{shown}{more}"


# --- Kubernetes -------------------------------------------------------------------------------------------------

class KubernetesObjectRecorder:
    """Every version of every Job and Pod an API server holds while this runs, from one watch per kind (Jobs are
    deleted when their run ends, so listing them at the end would find none)."""

    PATHS = {"Job": "/apis/batch/v1/jobs", "Pod": "/api/v1/pods"}

    def __init__(self, url: str, token: str) -> None:
        self.url, self._headers = url.rstrip("/"), {"Authorization": f"Bearer {token}"}
        self.objects: dict[tuple[str, str, str], dict] = {}  # (kind, uid, resourceVersion) -> object
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._follow, args=(kind, path), daemon=True,
                                          name=f"secrets-scan-watch-{kind}") for kind, path in self.PATHS.items()]

    def start(self) -> "KubernetesObjectRecorder":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _follow(self, kind: str, path: str) -> None:
        version = None  # None: list what exists first (again after a 410 Expired)
        while not self._stop.is_set():
            params = {"watch": "true", "timeoutSeconds": "1"}
            if version:
                params["resourceVersion"] = version
            try:
                with requests.get(self.url + path, params=params, headers=self._headers, stream=True,
                                  timeout=(5, 30)) as response:
                    response.raise_for_status()
                    for line in response.iter_lines():
                        event = json.loads(line)
                        if event.get("type") == "ERROR":
                            version = None
                            break
                        obj = event["object"]
                        metadata = obj.get("metadata", {})
                        version = metadata.get("resourceVersion") or version
                        self.objects[(kind, metadata.get("uid", "?"), metadata.get("resourceVersion", "?"))] = obj
            except (requests.RequestException, ValueError, KeyError):
                if self._stop.wait(0.2):
                    return

    def scan(self, secrets: list[Secret]) -> list[Finding]:
        findings = []
        for (kind, _uid, version), obj in list(self.objects.items()):
            metadata = obj.get("metadata", {})
            where = f"Kubernetes {kind} {metadata.get('namespace')}/{metadata.get('name')} (resourceVersion {version})"
            findings += [f for f in scan_object(obj, where, secrets) if f not in findings]
        return findings


@contextmanager
def kubernetes_objects_scanned(url: str, token: str) -> Iterator[KubernetesObjectRecorder]:
    """Record the server's Jobs and Pods for the `with` block (the server must outlive it); then fail on any
    secret in them."""
    recorder = KubernetesObjectRecorder(url, token).start()
    try:
        yield recorder
    finally:
        recorder.stop()
    secrets = known_secrets()
    findings = recorder.scan(secrets)
    kinds = sorted({kind for kind, _, _ in recorder.objects})
    uids = {uid for _, uid, _ in recorder.objects}
    figure = (f"secrets scan (Kubernetes): {describe(secrets)} checked against {len(recorder.objects)} versions of "
              f"{len(uids)} {'/'.join(kinds) or 'Job/Pod'} objects: {len(findings)} found")
    _report(findings, figure)
    print(figure)
    assert not findings, _failure_message(findings, "Kubernetes Jobs or Pods")


# --- test output (a pytest plugin: the root conftest names this module in pytest_plugins) ----------------------

def _basetemp(config: pytest.Config) -> Path | None:
    factory = getattr(config, "_tmp_path_factory", None)  # pytest's own TempPathFactory (tmpdir plugin)
    try:
        return factory.getbasetemp() if factory is not None else None
    except OSError:
        return None


def _remember_output(nodeid: str, texts: list[tuple[str, str]]) -> None:
    if not texts:
        return
    for name, text in texts:
        STATE.outputs[(nodeid, name)] = text  # a later phase's report repeats earlier sections: keep the last
    secrets = known_secrets(max_age=5.0)
    findings = []
    for name, text in texts:
        findings += scan_text(text, f"test output of {nodeid} ({name})", secrets)
    if findings:
        _report(findings, "")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    texts = [(name, content) for name, content in report.sections if content]
    if report.longrepr:
        texts.append((f"{report.when} failure report", str(report.longrepr)))
    _remember_output(report.nodeid, texts)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.longrepr:
        _remember_output(report.nodeid or "<collection>", [("collection error", str(report.longrepr))])


def pytest_configure(config: pytest.Config) -> None:
    _CONFIG[:] = [config]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Scan all the session's test output again, with every secret known now."""
    if not STATE.outputs and not STATE.findings:
        return
    secrets = known_secrets()
    findings = []
    for (nodeid, name), text in STATE.outputs.items():
        findings += scan_text(text, f"test output of {nodeid} ({name})", secrets)
    size = sum(len(text) for text in STATE.outputs.values())
    _report(findings, f"secrets scan (test output): {describe(secrets)} checked against {len(STATE.outputs)} "
                      f"captured sections and failure reports ({size} characters): {len(findings)} found")
    if STATE.findings and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    figures = [figure for figure in STATE.figures if figure]
    if not figures and not STATE.findings:
        return
    terminalreporter.section("secrets scan")
    for figure in figures:
        terminalreporter.write_line(figure)
    for note in dict.fromkeys(STATE.tolerated):
        terminalreporter.write_line(f"tolerated: {note}")
    if STATE.findings:
        terminalreporter.write_line(_failure_message(STATE.findings, "this session"), red=True, bold=True)

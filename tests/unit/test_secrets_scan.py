"""The secrets scan (tests/secrets_scan.py) finds a planted secret where it must not be, says where, and leaves
alone the files that hold a job's key legitimately. Everything planted here lives in a directory outside
pytest's temporary tree, so that the session's own scan neither learns these secrets nor sees these files."""

import base64
import json
import secrets
import sqlite3
import tempfile
from pathlib import Path

import pytest
import yaml

from tests import secrets_scan
from tests.secrets_scan import (
    STATE,
    Secret,
    check_block_document,
    discover_secrets,
    job_dir_files,
    record_secret,
    scan_files,
    scan_lines,
    scan_object,
)


@pytest.fixture
def outside():
    with tempfile.TemporaryDirectory(prefix="secrets-scan-unit-") as directory:
        yield Path(directory)


def job_key() -> Secret:
    return Secret(secrets.token_hex(16), "job-key")


def test_planted_secret_in_a_worker_log_is_found_with_its_file_and_line(outside):
    key = job_key()
    log = outside / "prefect" / "dendro-local.log"
    log.parent.mkdir()
    log.write_text(f"worker started\njob abc.def launched\nenv JOB_PRIVATE_KEY={key.value} leaked\nJob completed\n")
    findings, read = scan_files([log], [key, job_key()], outside)
    assert read == 1
    assert [str(f) for f in findings] == [f"job-key {key.value[:4] + '…'!r} found in file prefect/dendro-local.log:3"]
    assert key.value not in str(findings[0])  # the report names the kind, the place and 4 characters only


def test_binary_files_are_not_read(outside):
    key = job_key()
    recording, text = outside / "recording.nwb", outside / "stdout.log"
    recording.write_bytes(b"\x89HDF\r\n\x1a\n\0\0" + key.value.encode())
    text.write_text(f"a line with {key.value}\n")
    findings, read = scan_files([recording, text], [key], outside)
    assert read == 1 and [f.location for f in findings] == ["file stdout.log:1"]


def test_job_directory_files_are_scanned_but_the_legitimate_holders_of_the_key(outside):
    key = job_key()
    job = outside / "controller0" / "dendro-jobs" / "abcd1234.efgh5678"
    planted = {
        "batch.sh": True,  # a rendered Slurm script must never hold the key
        "tmp/working/_dendro/console_output.txt": True,
        "secrets/job_private_key": False,  # the key file itself
        "secrets/env": False,  # a container env file of the key, also under secrets/
        "stdout.log": False,  # the app's own stdout: the SDK prints its key
        "tmp/working/_dendro/dendro-job.log": False,  # the SDK's own debug log: the same line
    }
    for name in planted:
        (job / name).parent.mkdir(parents=True, exist_ok=True)
        (job / name).write_text(f"line one\n(Job private key: {key.value})\n")
    pack = outside / "controller0" / "dendro-jobs" / "slurm-packs" / "batch-0123456789ab.sh"
    pack.parent.mkdir()
    pack.write_text(f"#!/bin/bash\nexport JOB_PRIVATE_KEY={key.value}\n")

    files = dict(job_dir_files(outside))
    assert {p.relative_to(job).as_posix() for p, why in files.items() if why and p.is_relative_to(job)} == {
        name for name, scanned in planted.items() if not scanned}
    findings, _ = scan_files([p for p, why in files.items() if why is None], [key], outside)
    assert sorted(f.location for f in findings) == sorted(
        [f"file controller0/dendro-jobs/abcd1234.efgh5678/{name}:2" for name, scanned in planted.items() if scanned]
        + ["file controller0/dendro-jobs/slurm-packs/batch-0123456789ab.sh:2"])
    assert {f.kind for f in findings} == {"job-key"}


def test_log_lines_and_objects_name_the_line_or_the_field(outside):
    key, token = job_key(), Secret(secrets.token_urlsafe(24), "kube-token")
    lines = [("log line 1", "Job completed"), ("log line 2", f"reason: auth {token.value} refused")]
    assert [(f.kind, f.location) for f in scan_lines(lines, [key, token])] == [("kube-token", "log line 2")]

    encoded = base64.b64encode(key.value.encode()).decode()
    manifest = {"metadata": {"name": "dendro-abcd"}, "spec": {"template": {"spec": {"containers": [
        {"env": [{"name": "JOB_ID", "value": "abcd"}, {"name": "JOB_PRIVATE_KEY", "value": encoded}]}]}}}}
    findings = scan_object(manifest, "Kubernetes Job dendro/dendro-abcd", [key, token])
    assert [(f.kind, f.location) for f in findings] == [
        ("job-key (base64)", "Kubernetes Job dendro/dendro-abcd, field spec.template.spec.containers[0].env[1].value")]
    assert scan_object({"parameters": {"job_id": "abcd"}, "job_variables": {"cpus": 1}}, "flow run", [key]) == []


def test_block_documents_must_come_back_obfuscated_and_hold_no_other_secret(monkeypatch):
    monkeypatch.setattr(STATE, "tolerated", [])
    key_id = Secret("AKIA" + secrets.token_hex(8).upper(), "aws-access-key-id")
    secret_key = Secret(secrets.token_urlsafe(30), "aws-secret-access-key")
    job = job_key()

    def aws_block(secret_value: str, region: str = "us-east-1") -> dict:
        return {"name": "moto-batch", "block_type": {"slug": "aws-credentials"},
                "block_schema": {"fields": {"secret_fields": ["aws_secret_access_key"]}},
                "data": {"aws_access_key_id": key_id.value, "aws_secret_access_key": secret_value,
                         "region_name": region}}

    # Obfuscated secret field, and the access key id that the block type keeps in clear: nothing to report.
    assert check_block_document(aws_block("********"), [key_id, secret_key, job]) == []
    assert len(STATE.tolerated) == 1 and "aws-access-key-id" in STATE.tolerated[0]
    # The secret field in clear: reported twice, as unobfuscated and as the known secret it is.
    findings = check_block_document(aws_block(secret_key.value), [key_id, secret_key, job])
    assert sorted((f.kind, f.location) for f in findings) == [
        ("aws-secret-access-key", "block document aws-credentials/moto-batch, field aws_secret_access_key"),
        ("secret field not obfuscated", "block document aws-credentials/moto-batch, field aws_secret_access_key")]
    assert all(f.preview == secret_key.value[:4] + "…" for f in findings)
    # Another secret in a field that is not the block type's own credential.
    findings = check_block_document(aws_block("********", region=job.value), [key_id, secret_key, job])
    assert [(f.kind, f.location) for f in findings] == [
        ("job-key", "block document aws-credentials/moto-batch, field region_name")]


def test_secrets_are_discovered_in_the_stand_ins_stores_config_files_kubeconfigs_and_sdk_output(outside):
    job_keys = [secrets.token_hex(16) for _ in range(3)]
    store = outside / "controller0" / "central" / "central.sqlite"
    store.parent.mkdir(parents=True)
    with sqlite3.connect(store) as connection:
        connection.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, document TEXT NOT NULL)")
        for number, key in enumerate(job_keys[:2]):
            connection.execute("INSERT INTO jobs VALUES (?, ?)",
                               (f"job{number}", json.dumps({"jobId": f"job{number}", "jobPrivateKey": key})))
    connection.close()
    resource_key = secrets.token_hex(32)
    (outside / "controller0" / ".dendro_compute_resource.json").write_text(
        json.dumps({"compute_resource_id": "ab" * 32, "compute_resource_private_key": resource_key}))
    token = secrets.token_urlsafe(24)
    (outside / "k8s0").mkdir()
    (outside / "k8s0" / "kubeconfig").write_text(yaml.safe_dump(
        {"users": [{"name": "stand-in", "user": {"token": token}}]}))
    # A job deleted from its store since: the SDK's own output still names its key.
    stdout = outside / "controller0" / "dendro-jobs" / "job2" / "stdout.log"
    stdout.parent.mkdir(parents=True)
    stdout.write_text(f"Running /app/main.py (Job ID: job2)) (Job private key: {job_keys[2]})\n")

    assert discover_secrets(outside) == {job_keys[0]: "job-key", job_keys[1]: "job-key", job_keys[2]: "job-key",
                                         resource_key: "compute-resource-key", token: "kube-token"}


def test_a_secret_too_short_to_scan_for_is_refused():
    with pytest.raises(ValueError, match="at least 16 characters"):
        record_secret("testing", "aws-secret-access-key")
    assert "testing" not in secrets_scan.STATE.recorded

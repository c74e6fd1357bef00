"""The stand-in central as a real HTTP server on a free loopback port. (What it answers as the real central
does, status codes and details included, is pinned against the real one in test_central_contract.py.)"""

import json
import time

import pytest
import requests

from dendro_prefect.protocol.client import CentralClient, CentralError
from dendro_prefect.protocol.models import ComputeResourceSpec, DendroJob, parse
from dendro_prefect.protocol.signing import compute_resource_headers, generate_keypair, make_resource_code
from dendro_prefect.stand_in.admin_client import AdminError
from tests.conftest import create_letter_count_job, letter_count_spec, register


def unfinished_path(resource_id):
    return f"/api/compute_resource/compute_resources/{resource_id}/unfinished_jobs"


def test_signed_requests_are_served_and_bad_signatures_refused(central, resource):
    job_id = create_letter_count_job(central, resource.id)
    jobs = [parse(DendroJob, j, "job") for j in resource.client.get_unfinished_jobs()]
    assert [(j.jobId, j.status, j.runMethod) for j in jobs] == [(job_id, "pending", "local")]

    path = unfinished_path(resource.id)
    headers = compute_resource_headers(path, resource.id, resource.private_key)
    assert requests.get(central.url + path, headers=headers, timeout=10).status_code == 200
    _, other_key = generate_keypair()
    forged = compute_resource_headers(path, resource.id, other_key)
    assert requests.get(central.url + path, headers=forged, timeout=10).status_code == 500
    wrong_payload = dict(headers, **{"compute-resource-payload": path.replace("unfinished_jobs", "apps")})
    assert requests.get(central.url + path, headers=wrong_payload, timeout=10).status_code == 500
    assert requests.get(central.url + path, timeout=10).status_code == 422

    stranger_id, stranger_key = generate_keypair()
    stranger = CentralClient(central.url, stranger_id, stranger_key, retry_deadline=2)
    with pytest.raises(CentralError, match="HTTP 500: No compute resource with ID") as raised:
        stranger.get_apps()
    assert stranger_key not in str(raised.value)


def test_registration_link_registers_and_late_or_forged_codes_are_refused(central):
    """The link may be opened again while its code is valid (as with the real central)."""
    resource_id, private_key = generate_keypair()
    link = f"{central.url}/register-compute-resource/{resource_id}/{make_resource_code(private_key)}"
    assert requests.get(link, timeout=10).status_code == 200
    assert central.resource(resource_id)["computeResourceId"] == resource_id
    assert requests.get(link, timeout=10).status_code == 200
    late_id, late_key = generate_keypair()
    late_code = make_resource_code(late_key, int(time.time()) - 400)
    with pytest.raises(AdminError, match="resource code expired"):
        central.approve(late_id, late_code)
    with pytest.raises(AdminError, match="signature does not verify"):
        central.approve(late_id, make_resource_code(private_key))


def test_apps_spec_and_subscription(central, resource):
    central.set_apps(resource.id, [{"name": "letter_count", "specUri": "file:///apps/letter_count/spec.json"}])
    assert [a.specUri for a in resource.client.get_apps()] == ["file:///apps/letter_count/spec.json"]
    resource.client.put_spec(ComputeResourceSpec(apps=[letter_count_spec()], availableJobRunMethods=["local"]))
    # With the spec reported, a job needs no processor spec of its own (as in the GUI).
    job_id = create_letter_count_job(central, resource.id, processorSpec=None)
    assert central.job(job_id)["processorSpec"]["name"] == "letter_count"
    subscription = resource.client.get_pubsub_subscription()
    assert subscription.pubnubChannel == resource.id and not subscription.is_mock


def test_mock_pubsub_answers_the_mock_key(mock_pubsub_central):
    resource = register(mock_pubsub_central)
    assert resource.client.get_pubsub_subscription().is_mock


def test_status_transitions_follow_the_central_rules(central, resource):
    job_id = create_letter_count_job(central, resource.id)
    key = next(j["jobPrivateKey"] for j in resource.client.get_unfinished_jobs() if j["jobId"] == job_id)
    client = resource.client
    with pytest.raises(CentralError, match="HTTP 500: Cannot set job status to running when status is pending"):
        client.set_job_status(job_id, key, "running")
    with pytest.raises(CentralError, match="HTTP 500: Invalid job private key for job"):
        client.set_job_status(job_id, "0" * 32, "starting")
    client.set_job_status(job_id, key, "starting")
    with pytest.raises(CentralError, match="HTTP 500: Cannot set job error when status is running"):
        client.set_job_status(job_id, key, "running", error="boom")
    client.set_job_status(job_id, key, "failed", error="boom")
    assert client.get_job_status(job_id, key) == "failed"
    with pytest.raises(CentralError, match="HTTP 500: Cannot set job status to starting when status is failed"):
        client.set_job_status(job_id, key, "starting")
    assert central.job(job_id)["error"] == "boom"
    assert client.get_unfinished_jobs() == []
    central.delete_job(job_id)
    assert client.get_job_status(job_id, key) is None


def test_malformed_job_and_spec_are_refused_with_the_field(central, resource):
    project_id = central.create_project("p")
    central.upload_file(project_id, "in.txt", b"x")
    spec = letter_count_spec()["processors"][0]
    del spec["outputs"]
    with pytest.raises(AdminError, match="HTTP 422: malformed processor spec: outputs: Field required"):
        central.create_job({"computeResourceId": resource.id, "projectId": project_id, "processorName": "letter_count",
                            "inputFiles": [], "outputFiles": [], "processorSpec": spec})
    with pytest.raises(AdminError, match="malformed requiredResources: timeSec: Input should be greater than 0"):
        central.create_job({"computeResourceId": resource.id, "projectId": project_id, "processorName": "letter_count",
                            "inputFiles": [], "outputFiles": [], "processorSpec": letter_count_spec()["processors"][0],
                            "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": -1}})
    path = f"/api/compute_resource/compute_resources/{resource.id}/spec"
    headers = compute_resource_headers(path, resource.id, resource.private_key)
    answer = requests.put(central.url + path, headers=headers, json={"spec": {"apps": [{"name": "x"}]}}, timeout=10)
    assert answer.status_code == 422
    assert "malformed compute resource spec: apps.0.processors: Field required" in answer.json()["detail"]


def test_a_job_waits_while_its_input_is_another_jobs_pending_output(central, resource):
    first = create_letter_count_job(central, resource.id)
    project_id = central.job(first)["projectId"]
    request = {"computeResourceId": resource.id, "projectId": project_id, "processorName": "letter_count",
               "inputFiles": [{"name": "input", "fileName": "in.txt"}],
               "outputFiles": [{"name": "output", "fileName": "second.json"}],
               "inputParameters": [{"name": "letter", "value": "o"}],
               "processorSpec": letter_count_spec()["processors"][0], "runMethod": "local"}
    waiting = central.create_job(dict(request, inputFiles=[{"name": "input", "fileName": "out.json"}]))
    assert [j["jobId"] for j in resource.client.get_unfinished_jobs()] == [first]
    assert central.job(waiting)["status"] == "pending"


def test_blob_urls_are_signed_and_expire(central, resource):
    job_id = create_letter_count_job(central, resource.id)
    key = next(j["jobPrivateKey"] for j in resource.client.get_unfinished_jobs())
    answer = requests.get(f"{central.url}/api/processor/jobs/{job_id}/outputs/output/upload_url",
                          headers={"job-private-key": key}, timeout=10).json()
    upload = answer["uploadUrl"]
    assert requests.put(upload, data=b'{"count": 3}', timeout=10).status_code == 200
    assert requests.put(upload.replace("signature=", "signature=0"), data=b"x", timeout=10).status_code == 403
    assert requests.get(upload, timeout=10).status_code == 403  # an upload URL does not download
    expired = upload.replace("expires=", "expires=1")  # a different expiry breaks the signature
    assert requests.put(expired, data=b"x", timeout=10).status_code == 403
    file_id = central.job(job_id)["inputFiles"][0]["fileId"]
    info = requests.get(f"{central.url}/api/processor/jobs/{job_id}/files/{file_id}",
                        headers={"job-private-key": key}, timeout=10).json()
    ranged = requests.get(info["downloadUrl"], headers={"Range": "bytes=6-11"}, timeout=10)
    assert ranged.status_code == 206 and ranged.content == b"dendro"


def test_client_retries_transient_failures_until_a_deadline(tmp_path, caplog):
    """A real HTTP server that answers 503 twice, then 200; and one that always answers 503."""
    import http.server
    import threading

    answers = iter([503, 503, 200])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = next(answers, 503)
            body = json.dumps({"jobs": [], "success": True} if code == 200 else {"detail": "busy"}).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        resource_id, private_key = generate_keypair()
        client = CentralClient(f"http://127.0.0.1:{server.server_port}", resource_id, private_key, retry_deadline=10)
        with caplog.at_level("WARNING"):
            assert client.get_unfinished_jobs() == []
        assert len([r for r in caplog.records if "HTTP 503" in r.getMessage()]) == 2
        impatient = CentralClient(client.central_url, resource_id, private_key, retry_deadline=1)
        with pytest.raises(CentralError, match=r"HTTP 503: busy \(gave up after 1 s\)"):
            impatient.get_unfinished_jobs()
        assert private_key not in caplog.text
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_central_is_a_clear_error():
    resource_id, private_key = generate_keypair()
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = CentralClient(f"http://127.0.0.1:{port}", resource_id, private_key, retry_deadline=0.5)
    with pytest.raises(CentralError, match=r"GET /api/compute_resource/.*/apps: ConnectionError \(gave up"):
        client.get_apps()

"""Dendro 0.6: registering a compute client (the code of the service's page), its configuration file, and the
client's requests as the service expects them."""

import base64
import json
import stat

import pytest
import requests
from typer.testing import CliRunner

from dendro_prefect.cli import app
from dendro_prefect.config import ComputeClientConfig, ComputeResourceConfig, ConfigError, read_config
from dendro_prefect.protocol.models import ProtocolError
from dendro_prefect.protocol.signing import generate_keypair
from dendro_prefect.protocol.transport import CentralError, ClaimRefused
from dendro_prefect.protocol.v06 import client as v06_client
from dendro_prefect.protocol.v06.client import ServiceClient
from dendro_prefect.protocol.v06.models import GetJobRequest, SetJobStatusRequest
from dendro_prefect.protocol.v06.registration import read_registration_code, registration_page

CLIENT_KEY = "k3Y0fTh1sC0mpUt3Cl13ntABCDEFGHIJ"


def page_code(client_id="Ab12Cd34Ef56", key=CLIENT_KEY, name="lab-prefect", padded=False) -> str:
    """As RegisterComputeClientPage.tsx makes it: btoa(JSON.stringify({...}))."""
    text = base64.b64encode(json.dumps({"computeClientName": name, "computeClientId": client_id,
                                        "computeClientPrivateKey": key}).encode()).decode()
    return text if padded else text.rstrip("=")


def test_register_compute_client_writes_a_private_configuration_naming_its_protocol(tmp_path):
    path = tmp_path / ".dendro_compute_resource.json"
    result = CliRunner().invoke(app, ["register-compute-client", "--service", "hello_world_service", "--name",
                                      "lab-prefect", "--api-url", "http://127.0.0.1:9", "--config", str(path)],
                                input=page_code() + "\n")
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:9/register_compute_client/hello_world_service/lab-prefect" in result.output
    assert CLIENT_KEY not in result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["protocol"] == "dendro-0.6"
    config = read_config(path)
    assert isinstance(config, ComputeClientConfig)
    assert (config.compute_client_id, config.private_key, config.service_name, config.central_url) == (
        "Ab12Cd34Ef56", CLIENT_KEY, "hello_world_service", "http://127.0.0.1:9")
    again = CliRunner().invoke(app, ["register-compute-client", "--service", "s", "--name", "n", "--config",
                                     str(path)], input=page_code() + "\n")
    assert again.exit_code == 1 and "refusing to overwrite" in again.output


@pytest.mark.parametrize("code, reason", [
    ("not base64 !", "not base64 of JSON"),
    (base64.b64encode(b'{"computeClientId": "x"}').decode(), "computeClientPrivateKey: Field required"),
    (page_code(key=""), "computeClientPrivateKey: String should have at least 1 character"),
])
def test_a_wrong_code_is_refused_in_one_line_and_writes_nothing(tmp_path, code, reason):
    path = tmp_path / "c.json"
    result = CliRunner().invoke(app, ["register-compute-client", "--service", "s", "--name", "n", "--config",
                                      str(path)], input=code + "\n")
    assert result.exit_code == 1
    assert reason in result.output and result.output.strip().splitlines()[-1].startswith("Error: ")
    assert not path.exists()


def test_codes_with_and_without_padding_and_the_page_link():
    assert read_registration_code(page_code(padded=True)) == read_registration_code(page_code())
    with pytest.raises(ProtocolError, match="malformed registration code"):
        read_registration_code(base64.b64encode(b"[1]").decode())
    assert registration_page("https://svc/", "my service", "a/b") == "https://svc/register_compute_client/my%20service/a/b"


def test_each_protocol_reads_its_own_configuration_and_refuses_the_other(tmp_path):
    resource_id, key = generate_keypair()
    old = tmp_path / "old.json"  # written before there were two protocols: no `protocol`
    old.write_text(json.dumps({"compute_resource_id": resource_id, "compute_resource_private_key": key}))
    assert isinstance(read_config(old), ComputeResourceConfig)
    client = tmp_path / "client.json"
    ComputeClientConfig(compute_client_id="c1", compute_client_private_key=CLIENT_KEY, compute_client_name="n",
                        service_name="s").write(client)
    with pytest.raises(ConfigError, match="configures a Dendro 0.6 compute client, not a Dendro 0.2 compute resource"):
        ComputeResourceConfig.read(client)
    assert ComputeClientConfig.read(client).private_key == CLIENT_KEY
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"protocol": "dendro-0.9"}))
    with pytest.raises(ConfigError, match="protocol"):
        read_config(bad)


def encode(body) -> bytes:
    return json.dumps(body).encode()


class Recorder:
    """Stands in for the HTTP session: records each request and answers from a script."""

    def __init__(self, *answers):
        self.requests, self.answers = [], list(answers)

    def request(self, method, url, headers, json, timeout):
        self.requests.append((method, url, headers, json))
        status, body = self.answers.pop(0)
        response = requests.Response()
        response.status_code, response._content = status, encode(body)
        return response


def client_with(*answers) -> tuple[ServiceClient, Recorder]:
    client = ServiceClient("http://svc/", "client-1", CLIENT_KEY, retry_deadline=0)
    client._session = Recorder(*answers)
    return client, client._session


def test_requests_carry_exactly_the_declared_fields_and_bearer_keys():
    client, recorder = client_with((200, {"type": "getRunnableJobsForComputeClientResponse", "runnableJobs": [{"jobId": "j"}],
                                          "runningJobs": []}), (200, {"type": "setJobStatusResponse"}))
    assert client.runnable_jobs() == ([{"jobId": "j"}], [])
    client.set_job_status("j", "job-key-123", "failed", error="no\nsuch  app")
    (m1, url1, h1, body1), (m2, url2, h2, body2) = recorder.requests
    assert (m1, url1, h1, body1) == ("POST", "http://svc/api/getRunnableJobsForComputeClient",
                                     {"Authorization": f"Bearer {CLIENT_KEY}"},
                                     {"type": "getRunnableJobsForComputeClientRequest", "computeClientId": "client-1"})
    assert (url2, h2, body2) == ("http://svc/api/setJobStatus", {"Authorization": "Bearer job-key-123"},
                                 {"type": "setJobStatusRequest", "jobId": "j", "computeClientId": "client-1",
                                  "status": "failed", "error": "no such app"})
    with pytest.raises(ValueError):
        SetJobStatusRequest(jobId="j", computeClientId="c", status="starting", extra="x")
    assert GetJobRequest(jobId="j").body() == {"type": "getJobRequest", "jobId": "j", "includePrivateKey": False}


def test_a_starting_refused_because_another_client_took_the_job_is_a_claim_refusal():
    client, _ = client_with(
        (400, {"error": "Trying to start job. Job is not in pending status. Status is starting"}),
        (200, {"type": "getJobResponse", "job": {"jobId": "j", "status": "starting", "computeClientId": "other",
                                                 "computeClientName": "lab-2"}}))
    with pytest.raises(ClaimRefused, match="job j was claimed by compute client lab-2 first") as raised:
        client.set_job_status("j", "job-key-123", "starting")
    assert "job-key-123" not in str(raised.value)
    # A refusal for another cause stays what it is.
    client, _ = client_with((401, {"error": "Unauthorized: incorrect or missing job private key"}),
                            (200, {"type": "getJobResponse", "job": {"jobId": "j", "status": "pending"}}))
    with pytest.raises(CentralError, match="HTTP 401: Unauthorized") as raised:
        client.set_job_status("j", "wrong", "starting")
    assert not isinstance(raised.value, ClaimRefused)
    client, _ = client_with((500, {"error": "Failed to update job"}), (200, {"type": "getJobResponse"}))
    with pytest.raises(ClaimRefused, match="claimed by nobody: it was deleted"):
        client.set_job_status("j", "k", "starting")


def test_an_answer_of_the_wrong_type_is_a_protocol_error():
    client, _ = client_with((200, {"type": "somethingElse"}))
    with pytest.raises(ProtocolError, match="malformed getRunnableJobsForComputeClient answer"):
        client.runnable_jobs()
    assert v06_client.DEFAULT_API_URL.startswith("https://")

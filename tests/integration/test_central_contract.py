"""The stand-in answers as the real Dendro 0.2.17 central does: every test runs against both, the real one being
the PyPI package's own routers (tests/real_central/serve.py). What the compute resource and the job-side SDK
see is pinned here: status codes, fields, which messages are published, which jobs `unfinished_jobs` shows
(the approval gate, inputs that are pending files), which jobs the GUI refuses. Where the two differed, the
stand-in was changed to follow the real one (README, "The central stand-in")."""

from __future__ import annotations

import queue
import time

import pytest
import requests
from pubnub.enums import PNStatusCategory

from dendro_prefect.protocol.signing import compute_resource_headers, generate_keypair, make_resource_code
from dendro_prefect.stand_in.admin_client import AdminError
from dendro_prefect.stand_in.process import running_stand_in
from tests.conftest import Resource, create_letter_count_job, letter_count_spec, register
from tests.pubnub_listener import subscribed
from tests.real_central.harness import RealCentral, running_real_central

PREFIX = "/api/compute_resource/compute_resources"


@pytest.fixture(scope="module", params=["stand-in", "real"])
def central(request, tmp_path_factory):
    """The stand-in, then the real central: one of each for the module."""
    if request.param == "stand-in":
        with running_stand_in(tmp_path_factory.mktemp("stand-in")) as admin:
            yield admin
    else:
        with running_real_central(tmp_path_factory.mktemp("real-central")) as admin:
            yield admin


@pytest.fixture
def resource(central) -> Resource:
    return register(central)


def signed(central, resource_id: str, private_key: str, method: str, endpoint: str, **kwargs) -> requests.Response:
    path = f"{PREFIX}/{resource_id}/{endpoint}"
    headers = compute_resource_headers(path, resource_id, private_key)
    return requests.request(method, central.url + path, headers=headers, timeout=10, **kwargs)


def job_call(central, method: str, path: str, key: str, **kwargs) -> requests.Response:
    return requests.request(method, f"{central.url}/api/processor/{path}", headers={"job-private-key": key},
                            timeout=10, **kwargs)


def key_of(resource: Resource, job_id: str) -> str:
    return next(j["jobPrivateKey"] for j in resource.client.get_unfinished_jobs() if j["jobId"] == job_id)


def unfinished_ids(resource: Resource) -> list[str]:
    return [j["jobId"] for j in resource.client.get_unfinished_jobs()]


def job_request(resource_id: str, project_id: str, output: str, **overrides) -> dict:
    request = {
        "computeResourceId": resource_id, "projectId": project_id, "processorName": "letter_count",
        "inputFiles": [{"name": "input", "fileName": "in.txt"}],
        "outputFiles": [{"name": "output", "fileName": output}],
        "inputParameters": [{"name": "letter", "value": "o"}],
        "processorSpec": letter_count_spec()["processors"][0],
        "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 60}, "runMethod": "local",
    }
    return request | overrides


def project_with_input(central) -> str:
    project_id = central.create_project("contract")
    central.upload_file(project_id, "in.txt", b"hello dendro world")
    return project_id


def next_message(listener, timeout: float = 5.0) -> dict:
    return listener.messages.get(timeout=timeout).message


def test_registration_takes_a_signed_resource_code_again_and_refuses_a_bad_one(central):
    resource_id, private_key = generate_keypair()
    code = make_resource_code(private_key)
    central.approve(resource_id, code)
    central.approve(resource_id, code)  # the link opened twice: the same owner registers it again
    assert central.resource(resource_id)["computeResourceId"] == resource_id
    with pytest.raises(AdminError, match="HTTP 401"):
        central.approve(resource_id, make_resource_code(private_key, int(time.time()) - 400))  # expired
    _, other_key = generate_keypair()
    with pytest.raises(AdminError, match="HTTP 401"):
        central.approve(resource_id, make_resource_code(other_key))


def test_compute_resource_calls_and_their_refusals(central, resource):
    answer = signed(central, resource.id, resource.private_key, "GET", "pubsub_subscription")
    assert answer.status_code == 200
    subscription = answer.json()["subscription"]
    assert set(subscription) == {"pubnubSubscribeKey", "pubnubChannel", "pubnubUser"}  # no server named
    assert subscription["pubnubChannel"] == subscription["pubnubUser"] == resource.id
    assert signed(central, resource.id, resource.private_key, "GET", "unfinished_jobs").json() == \
        {"jobs": [], "success": True}
    # Refusals are HTTP 500 with a detail, as every error of these routes (the real central's route wrapper).
    path = f"{PREFIX}/{resource.id}/unfinished_jobs"
    _, other_key = generate_keypair()
    forged_headers = compute_resource_headers(path, resource.id, other_key)
    forged = requests.get(central.url + path, headers=forged_headers, timeout=10)
    assert forged.status_code == 500 and forged.json()["detail"].startswith("Invalid signature")
    headers = compute_resource_headers(path, resource.id, resource.private_key)
    other_path = path.replace("unfinished_jobs", "apps")
    wrong_payload = requests.get(central.url + path, headers=headers | {"compute-resource-payload": other_path},
                                 timeout=10)
    assert wrong_payload.status_code == 500 and wrong_payload.json()["detail"].startswith("Unexpected payload")
    assert requests.get(central.url + path, timeout=10).status_code == 422  # the headers are required
    # A resource that was never registered: its jobs are none, everything else is refused.
    stranger_id, stranger_key = generate_keypair()
    for method, endpoint, body in (("GET", "apps", None), ("GET", "pubsub_subscription", None),
                                   ("PUT", "spec", {"spec": {"apps": []}})):
        answer = signed(central, stranger_id, stranger_key, method, endpoint, json=body)
        assert answer.status_code == 500, (endpoint, answer.text)
    assert signed(central, stranger_id, stranger_key, "GET", "apps").json()["detail"] == \
        f"No compute resource with ID {stranger_id}"
    assert signed(central, stranger_id, stranger_key, "GET", "unfinished_jobs").json() == {"jobs": [], "success": True}


def test_job_side_calls_and_their_refusals(central, resource):
    job_id = create_letter_count_job(central, resource.id)
    key = key_of(resource, job_id)
    job = next(j for j in resource.client.get_unfinished_jobs() if j["jobId"] == job_id)
    assert job["outputFileIds"] == [job["outputFiles"][0]["fileId"]]  # the pending output is a file already

    def put_status(body: dict, with_key: str = key) -> requests.Response:
        return job_call(central, "PUT", f"jobs/{job_id}/status", with_key, json=body)

    def refusal(answer: requests.Response) -> tuple[int, str]:
        return answer.status_code, answer.json()["detail"]

    assert refusal(put_status({"status": "running"})) == \
        (500, "Cannot set job status to running when status is pending")
    assert refusal(put_status({"status": "starting", "error": "no"})) == \
        (500, "Cannot set job error when status is starting")
    assert put_status({"status": "starting"}, "0" * 32).status_code == 500
    assert job_call(central, "GET", f"jobs/{job_id}/status", "0" * 32).status_code == 500
    assert put_status({"status": "starting"}).json() == {"success": True}
    v2 = job_call(central, "GET", f"jobs_v2/{job_id}", key).json()
    assert {"jobId", "status", "processorName", "inputs", "inputFolders", "outputs", "outputFolders",
            "parameters"} <= set(v2)
    assert v2["inputs"][0]["dendro_uri"].startswith(f"dendro:?project={job['projectId']}&file_id=")
    # An upload URL for any output name; the pending output file has no content to download yet.
    assert job_call(central, "GET", f"jobs/{job_id}/outputs/anything/upload_url", key).status_code == 200
    assert job_call(central, "GET", f"jobs/{job_id}/files/{job['outputFiles'][0]['fileId']}", key).status_code == 500
    assert put_status({"status": "failed", "error": "it broke"}).json() == {"success": True}
    assert refusal(put_status({"status": "failed"})) == (500, "Cannot set job status to failed when status is failed")
    central.delete_job(job_id)
    assert job_call(central, "GET", f"jobs/{job_id}/status", key).json() == {"status": None, "success": True}
    assert put_status({"status": "failed"}).status_code == 500


def test_published_messages_and_none_on_deletion(central, resource):
    subscription = resource.client.get_pubsub_subscription()
    with subscribed(central.pubsub_origin, [resource.id], subscription.pubnubSubscribeKey) as listener:
        listener.wait_for_status(PNStatusCategory.PNConnectedCategory)
        apps_changed = {"type": "computeResourceAppsChanaged", "computeResourceId": resource.id}
        central.set_apps(resource.id, [{"name": "letter_count", "specUri": "file:///spec.json"}])
        assert next_message(listener) == apps_changed
        job_id = create_letter_count_job(central, resource.id)
        about_job = {"projectId": job_id.split(".")[0], "computeResourceId": resource.id, "jobId": job_id}
        assert next_message(listener) == {"type": "newPendingJob", **about_job}
        resource.client.set_job_status(job_id, key_of(resource, job_id), "starting")
        assert next_message(listener) == {"type": "jobStatusChanged", **about_job, "status": "starting"}
        central.delete_job(job_id)
        central.set_apps(resource.id, [])
        assert next_message(listener) == apps_changed  # the deletion published nothing
        with pytest.raises(queue.Empty):
            listener.messages.get(timeout=0.3)


def test_approval_gate_after_10_pending_or_running_jobs_of_a_project(central, resource):
    """`starting` jobs do not count, nor do other projects' jobs; approving publishes jobStatusChanged."""
    project_id = project_with_input(central)
    first_ten = central.create_jobs([job_request(resource.id, project_id, f"out{i}.json") for i in range(10)])
    resource.client.set_job_status(first_ten[0], key_of(resource, first_ten[0]), "starting")
    eleventh = central.create_job(job_request(resource.id, project_id, "out10.json"))  # 9 pending, 1 starting
    assert not central.job(eleventh).get("pendingApproval")
    create_letter_count_job(central, resource.id)  # in a project of its own
    held = central.create_job(job_request(resource.id, project_id, "out11.json"))  # 10 pending
    assert central.job(held)["pendingApproval"] is True and central.job(held)["status"] == "pending"
    assert held not in unfinished_ids(resource) and eleventh in unfinished_ids(resource)
    subscription = resource.client.get_pubsub_subscription()
    with subscribed(central.pubsub_origin, [resource.id], subscription.pubnubSubscribeKey) as listener:
        listener.wait_for_status(PNStatusCategory.PNConnectedCategory)
        central.approve_job(held)
        assert next_message(listener) == {"type": "jobStatusChanged", "projectId": project_id,
                                          "computeResourceId": resource.id, "jobId": held, "status": "pending"}
    assert central.job(held)["pendingApproval"] is False
    assert held in unfinished_ids(resource)


def test_a_job_that_does_not_match_its_processor_spec_is_refused(central, resource):
    project_id = project_with_input(central)
    spec = letter_count_spec()["processors"][0]
    cases = [
        ({"inputParameters": [{"name": "letter", "value": 3}]},
         "Parameter value is not consistent with type: letter 3 str"),
        ({"inputParameters": [{"name": "letter", "value": "o"}, {"name": "colour", "value": "red"}]},
         "Processor parameter not found: colour"),
        ({"inputParameters": []}, "Required parameter not found: letter"),
        ({"inputFiles": [{"name": "text", "fileName": "in.txt"}]}, "Processor input not found: text"),
        ({"inputFiles": []}, "Required input not found: input"),
        ({"outputFiles": []}, "Required output not found: output"),
        ({"processorName": "letter_counter"}, "Processor name mismatch: letter_count != letter_counter"),
        ({"inputFiles": [{"name": "input", "fileName": "absent.txt"}]},
         "Project input file does not exist: absent.txt"),
        ({"processorSpec": spec | {"parameters": [{"name": "letter", "type": "Tuple[str]"}]}},
         "Unknown type in _parameter_value_is_consistent_with_type: Tuple[str]"),
    ]
    for overrides, reason in cases:
        with pytest.raises(AdminError, match="HTTP 500") as refused:
            central.create_job(job_request(resource.id, project_id, "out.json", **overrides))
        assert str(refused.value).endswith(reason), (overrides, str(refused.value))
    assert unfinished_ids(resource) == []
    # What the spec allows: an int for a float, a default left out.
    accepted = central.create_job(job_request(resource.id, project_id, "out.json", inputParameters=[
        {"name": "letter", "value": "o"}, {"name": "delay_sec", "value": 2}]))
    assert unfinished_ids(resource) == [accepted]


def test_a_job_waits_while_an_input_is_a_pending_file_of_its_project(central, resource):
    """An output stays a pending file until its job completes: a failed job's output keeps a job that
    reads it waiting for good (until the file is replaced)."""
    project_id = project_with_input(central)
    first = central.create_job(job_request(resource.id, project_id, "a.json"))
    reader = central.create_job(job_request(resource.id, project_id, "b.json",
                                            inputFiles=[{"name": "input", "fileName": "a.json"}]))
    assert unfinished_ids(resource) == [first]
    resource.client.set_job_status(first, key_of(resource, first), "failed", "it broke")
    assert unfinished_ids(resource) == []
    assert central.job(reader)["status"] == "pending"


def test_a_new_job_replaces_the_jobs_that_make_its_output(central, resource):
    """As in the GUI: running a processor again into the same output file deletes the earlier job (a
    running one too: its app learns it from its status); `${job-id}` in an output's file name is the job id."""
    project_id = project_with_input(central)
    first = central.create_job(job_request(resource.id, project_id, "out.json"))
    resource.client.set_job_status(first, key_of(resource, first), "starting")
    key = key_of(resource, first)
    again = central.create_job(job_request(resource.id, project_id, "out.json"))
    assert unfinished_ids(resource) == [again]
    assert job_call(central, "GET", f"jobs/{first}/status", key).json()["status"] is None
    named = central.create_job(job_request(resource.id, project_id, "out-${job-id}.json"))
    assert central.job(named)["outputFiles"][0]["fileName"] == f"out-{named}.json"
    assert sorted(unfinished_ids(resource)) == sorted([again, named])


def test_run_methods_beyond_the_real_central(central, resource):
    """Where the stand-in knowingly differs: it takes jobs of runMethod `kubernetes` (our pool) and jobs
    without one (what the controller must refuse), which the real 0.2.17 central's GUI refuses (HTTP 422:
    its request model allows local, aws_batch and slurm only)."""
    project_id = project_with_input(central)
    for run_method in ("kubernetes", None):
        request = job_request(resource.id, project_id, f"out-{run_method}.json", runMethod=run_method)
        if isinstance(central, RealCentral):
            with pytest.raises(AdminError, match="HTTP 422"):
                central.create_job(request)
        else:
            assert central.job(central.create_job(request))["runMethod"] == run_method

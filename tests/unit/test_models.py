import json

import pytest

from dendro_prefect.protocol.models import (
    AppsChangedMessage,
    AppSpec,
    DendroJob,
    NewPendingJobMessage,
    ProtocolError,
    PubsubMessage,
    parse,
)
from tests.conftest import FIXTURES


@pytest.mark.parametrize("spec_file", sorted((FIXTURES / "specs").glob("*.json")), ids=lambda p: p.stem)
def test_real_app_specs_parse(spec_file):
    document = json.loads(spec_file.read_text())
    spec = parse(AppSpec, document, "app spec")
    assert [p.name for p in spec.processors] == [p["name"] for p in document["processors"]]
    for processor, raw in zip(spec.processors, document["processors"]):
        assert [(p.name, p.type) for p in processor.parameters] == [(p["name"], p["type"]) for p in raw["parameters"]]
        assert spec.processor(raw["name"]) is processor


def job_document() -> dict:
    spec = json.loads((FIXTURES / "specs" / "dendro_letter_count_spec.json").read_text())
    return {
        "projectId": "p1", "jobId": "p1.abcdefgh", "jobPrivateKey": "k" * 32, "userId": "u",
        "processorName": "letter_count", "inputFiles": [{"name": "input", "fileId": "f1", "fileName": "a.txt"}],
        "inputFileIds": ["f1"], "inputParameters": [{"name": "letter", "value": "a"}],
        "outputFiles": [{"name": "output", "fileName": "out.json"}],
        "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 1, "timeSec": 60},
        "runMethod": "slurm", "timestampCreated": 1.0, "computeResourceId": "c" * 64, "status": "pending",
        "processorSpec": spec["processors"][0],
    }


def test_job_parses_and_hides_its_key_from_repr():
    job = parse(DendroJob, job_document(), "job")
    assert job.requiredResources.timeSec == 60
    assert "k" * 32 not in repr(job)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d.pop("processorSpec"), "processorSpec: Field required"),
        (lambda d: d["processorSpec"].pop("inputs"), "processorSpec.inputs: Field required"),
        (lambda d: d.update(runMethod="cloud"), "runMethod"),
        (lambda d: d.update(status="done"), "status"),
        (lambda d: d["requiredResources"].update(numCpus="many"), "requiredResources.numCpus"),
        (lambda d: d["inputFiles"][0].pop("fileId"), "inputFiles.0.fileId: Field required"),
    ],
)
def test_malformed_job_names_the_field(change, field):
    document = job_document()
    change(document)
    with pytest.raises(ProtocolError) as raised:
        parse(DendroJob, document, "job")
    message = str(raised.value)
    assert message.startswith("malformed job: ") and field in message
    assert "\n" not in message and "k" * 32 not in message


def test_malformed_spec_names_the_field():
    with pytest.raises(ProtocolError, match=r"processors\.0\.parameters\.0\.type: Field required"):
        parse(AppSpec, {"name": "x", "processors": [{"name": "p", "inputs": [], "outputs": [],
                                                     "parameters": [{"name": "a"}]}]}, "app spec")


def test_pubsub_messages():
    message = parse(PubsubMessage, {"type": "newPendingJob", "projectId": "p", "computeResourceId": "c", "jobId": "j"}, "m")
    assert isinstance(message, NewPendingJobMessage)
    assert isinstance(parse(PubsubMessage, {"type": "computeResourceAppsChanaged", "computeResourceId": "c"}, "m"),
                      AppsChangedMessage)
    with pytest.raises(ProtocolError, match="malformed PubSub message: newPendingJob.jobId: Field required"):
        parse(PubsubMessage, {"type": "newPendingJob", "projectId": "p", "computeResourceId": "c"}, "PubSub message")
    with pytest.raises(ProtocolError, match="PubSub message"):
        parse(PubsubMessage, {"type": "somethingElse"}, "PubSub message")
    with pytest.raises(ProtocolError):
        parse(PubsubMessage, "not an object", "PubSub message")

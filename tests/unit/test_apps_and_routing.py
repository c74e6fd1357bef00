import json

import pytest

from dendro_prefect.apps import AppCatalog, AppSpecError, LoadedApp, load_spec, raw_spec_url
from dendro_prefect.controller.routing import DEFAULT_DEPLOYMENTS, RoutingError, plan_flow_run
from dendro_prefect.protocol.models import AppSpec, ComputeResourceApp, DendroJob, parse
from dendro_prefect.protocol.v06.models import ServiceJob
from dendro_prefect.workers.job_card import job_card, job_card_key
from dendro_prefect.workers.tail import FileTail
from tests.conftest import FIXTURES, LETTER_COUNT_APP
from tests.unit.test_models import job_document


def test_github_blob_urls_become_raw_urls():
    url = raw_spec_url("https://github.com/scratchrealm/pc-spike-sorting/blob/main/mountainsort5/spec.json")
    assert url.startswith("https://raw.githubusercontent.com/scratchrealm/pc-spike-sorting/main/mountainsort5/spec.json?cachebust=")
    assert raw_spec_url("file:///x/spec.json") == "file:///x/spec.json"


def test_executables_resolve_as_the_original_daemon_resolves_them():
    local = AppCatalog.load([ComputeResourceApp(name="letter_count", specUri=(LETTER_COUNT_APP / "spec.json").as_uri())])
    assert local.for_processor("letter_count").executable == str(LETTER_COUNT_APP / "main.py")
    spec, _ = load_spec((FIXTURES / "specs" / "pc-spike-sorting_mountainsort5_spec.json").as_uri())
    assert LoadedApp("ms5", "uri", spec, None).executable == "/app/main.py"
    no_image = spec.model_copy(update={"appImage": "", "appExecutable": None, "executable": None})
    with pytest.raises(AppSpecError, match="app ms5 has neither appImage nor appExecutable"):
        _ = LoadedApp("ms5", "uri", no_image, None).executable


def test_a_broken_spec_is_skipped_and_named(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"name": "bad", "processors": [{"name": "p"}]}))
    catalog = AppCatalog.load([
        ComputeResourceApp(name="letter_count", specUri=(LETTER_COUNT_APP / "spec.json").as_uri()),
        ComputeResourceApp(name="bad", specUri=(tmp_path / "bad.json").as_uri()),
        ComputeResourceApp(name="ftp", specUri="ftp://example/spec.json"),
    ])
    assert [a.name for a in catalog.apps] == ["letter_count"]
    assert "processors.0.inputs: Field required" in catalog.errors["bad"]
    assert catalog.errors["ftp"] == "spec URI ftp://example/spec.json is neither file:// nor http(s)://"
    with pytest.raises(AppSpecError, match=r"no app of this compute resource has processor ms5 \(apps not loaded: bad: "):
        catalog.for_processor("ms5")


def test_plan_carries_resources_but_never_the_key():
    job = parse(DendroJob, job_document(), "job")
    app = LoadedApp("letter_count", "uri", parse(AppSpec, json.loads((LETTER_COUNT_APP / "spec.json").read_text()), "s"),
                    LETTER_COUNT_APP)
    plan = plan_flow_run(job, app, DEFAULT_DEPLOYMENTS)
    assert plan.deployment == "dendro-job/slurm"
    assert plan.parameters == {"job_id": "p1.abcdefgh"}
    assert plan.job_variables == {"app_name": "letter_count", "app_image": None,
                                  "app_executable": str(LETTER_COUNT_APP / "main.py"),
                                  "num_cpus": 1, "num_gpus": 0, "memory_gb": 1.0, "time_limit_sec": 60.0}
    assert plan.name == "letter_count/letter_count p1.abcdefgh"
    assert plan.tags == ["app:letter_count", "processor:letter_count", "project:p1", "run-method:slurm",
                         "job:p1.abcdefgh", f"resource:{'c' * 64}"]
    assert job.jobPrivateKey not in plan.model_dump_json()
    with pytest.raises(RoutingError, match="no deployment for runMethod slurm"):
        plan_flow_run(job, app, {"local": "dendro-job/local"})
    with pytest.raises(RoutingError, match="has no runMethod"):
        plan_flow_run(job.model_copy(update={"runMethod": None}), app, DEFAULT_DEPLOYMENTS)


def test_file_tail_returns_whole_new_lines_and_the_last_state_of_progress_lines(tmp_path):
    path = tmp_path / "out.txt"
    tail = FileTail(path)
    assert tail.read_lines() == []
    path.write_bytes(b"first\nprogress 10%\rprogress 100%\npart")
    assert tail.read_lines() == ["first", "progress 100%"]
    with open(path, "ab") as handle:
        handle.write(b"ial\nlast")
    assert tail.read_lines() == ["partial"]
    assert tail.read_lines(final=True) == ["last"]


def test_job_card_links_to_the_project_and_hides_secret_parameters():
    document = job_document()
    document["inputParameters"] += [{"name": "token", "value": "s3cr3t-value", "secret": True},
                                    {"name": "note", "value": "a|b"}]
    card = job_card(parse(DendroJob, document, "job"), "http://central/", "slurm:42")
    assert card.startswith("# Dendro job p1.abcdefgh\n")
    assert "[Project p1 in Dendro](http://central/project/p1)" in card
    assert "| Infrastructure | `slurm:42` |" in card and "| Run method | slurm |" in card
    assert "| Parameter `letter` | `'a'` |" in card and "| Parameter `note` | `'a\\|b'` |" in card
    assert "| Parameter `token` | (secret) |" in card
    assert "s3cr3t-value" not in card and document["jobPrivateKey"] not in card
    assert job_card_key("p1.abcdefgh") == "dendro-job-p1-abcdefgh"  # Prefect's keys: a-z, 0-9 and dashes


def test_a_dendro_06_job_card_links_to_its_page_at_the_service():
    job = ServiceJob.model_validate({
        "jobId": "Abc123", "jobPrivateKey": "k3yk3yk3yk3yk3yk3yk3yk3yk3yk3yk3", "serviceName": "hello_world_service",
        "userId": "github|1", "batchId": "b1", "tags": [], "jobDefinitionHash": "h", "jobDependencies": [],
        "jobDefinition": {"appName": "hello_world", "processorName": "count_characters",
                          "inputFiles": [{"name": "input", "fileBaseName": "in|put.txt", "url": "https://x/in?sig=1"}],
                          "outputFiles": [{"name": "output", "fileBaseName": "output.json"}],
                          "parameters": [{"name": "include_whitespace", "value": False}]},
        "requiredResources": {"numCpus": 1, "numGpus": 0, "memoryGb": 2, "timeSec": 60},
        "timestampCreatedSec": 1.0, "canceled": False, "status": "pending", "isRunnable": True})
    card = job_card(job, "http://service/", "process:7")
    assert card.startswith("# Dendro job Abc123\n") and "[Job Abc123 in Dendro](http://service/job/Abc123)" in card
    assert "| Service | `hello_world_service` |" in card and "| Processor | `count_characters` |" in card
    assert "| Input `input` | in\\|put.txt |" in card and "| Parameter `include_whitespace` | `False` |" in card
    assert "| Resources | 1 CPU, 0 GPU, 2 GB, 60 s |" in card and "| Batch | `b1` |" in card
    assert job.jobPrivateKey not in card and "sig=1" not in card

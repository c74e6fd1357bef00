import json
import stat

import pytest
from typer.testing import CliRunner

from dendro_prefect.cli import app
from dendro_prefect.config import ComputeResourceConfig, ConfigError, config_from_node_yaml, config_path
from dendro_prefect.protocol.signing import generate_keypair, verify_resource_code
from dendro_prefect.workers.commands import container_method_for


def test_register_writes_a_private_config_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / ".dendro_compute_resource.json"
    runner = CliRunner()
    result = runner.invoke(app, ["register-compute-resource", "--central", "http://127.0.0.1:9", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = ComputeResourceConfig.read(path)
    assert config.private_key not in result.output
    link = result.output.strip().splitlines()[-1]
    assert link.startswith(f"http://127.0.0.1:9/register-compute-resource/{config.compute_resource_id}/")
    assert verify_resource_code(link.rsplit("/", 1)[1], config.compute_resource_id) is None
    before = path.read_text()
    again = runner.invoke(app, ["register-compute-resource", "--central", "http://127.0.0.1:9", "--config", str(path)])
    assert again.exit_code == 1 and "refusing to overwrite" in again.output
    assert path.read_text() == before


def test_config_rejects_a_key_of_another_resource(tmp_path):
    resource_id, _ = generate_keypair()
    _, other_key = generate_keypair()
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"compute_resource_id": resource_id, "compute_resource_private_key": other_key}))
    with pytest.raises(ConfigError, match="does not belong to compute_resource_id") as raised:
        ComputeResourceConfig.read(path)
    assert other_key not in str(raised.value)


def test_missing_and_malformed_config(tmp_path):
    with pytest.raises(ConfigError, match="not found; run `dendro-prefect register-compute-resource`"):
        ComputeResourceConfig.read(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="is not JSON"):
        ComputeResourceConfig.read(tmp_path / "bad.json")


def test_import_of_the_original_node_yaml(tmp_path):
    resource_id, private_key = generate_keypair()
    node = tmp_path / ".dendro-compute-resource-node.yaml"
    node.write_text(
        f"COMPUTE_RESOURCE_ID: {resource_id}\nCOMPUTE_RESOURCE_PRIVATE_KEY: {private_key}\n"
        "CONTAINER_METHOD: apptainer\nDEFAULT_JOB_RUN_METHOD: slurm\nAVAILABLE_JOB_RUN_METHODS: local,slurm\n"
        "AWS_ACCESS_KEY_ID: ''\n"
    )
    config = config_from_node_yaml(node, "http://central")
    assert (config.compute_resource_id, config.private_key) == (resource_id, private_key)
    assert config.container_method == "apptainer"
    assert config.available_job_run_methods == ["local", "slurm"]
    out = tmp_path / "out.json"
    result = CliRunner().invoke(app, ["register-compute-resource", "--central", "http://central",
                                      "--from-node-yaml", str(node), "--config", str(out)])
    assert result.exit_code == 0, result.output
    assert ComputeResourceConfig.read(out).compute_resource_id == resource_id


def test_register_writes_into_the_dendro_prefect_home_where_everyone_reads_it(tmp_path, monkeypatch):
    """Controller and workers run in other directories (Prefect's pull step, a worker's own): all of them
    read the file where register-compute-resource wrote it, the dendro-prefect home."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("DENDRO_PREFECT_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["register-compute-resource", "--central", "http://127.0.0.1:9"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "user" / ".dendro-prefect" / ".dendro_compute_resource.json"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE(written.parent.stat().st_mode) == 0o700
    assert f"Wrote {written}" in result.output
    assert config_path() == written
    monkeypatch.chdir(tmp_path / "user")
    assert ComputeResourceConfig.read().compute_resource_id == ComputeResourceConfig.read(str(written)).compute_resource_id
    monkeypatch.setenv("DENDRO_PREFECT_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match=f"{tmp_path / 'elsewhere' / '.dendro_compute_resource.json'} not found"):
        ComputeResourceConfig.read()
    assert config_path("relative.json") == tmp_path / "user" / "relative.json"


@pytest.mark.parametrize("option", [[], ["--container-method", "none"]])
def test_a_node_file_with_an_empty_container_method_runs_imageless_apps_as_processes(tmp_path, option):
    """The original daemon's file of a resource that runs apps as plain processes has CONTAINER_METHOD ''.
    Imported, it means docker (the original's default) unless --container-method says otherwise; either
    way an app without image runs as a plain process (tests/unit/test_launch_rules.py)."""
    resource_id, private_key = generate_keypair()
    node = tmp_path / ".dendro-compute-resource-node.yaml"
    node.write_text(f"COMPUTE_RESOURCE_ID: {resource_id}\nCOMPUTE_RESOURCE_PRIVATE_KEY: {private_key}\n"
                    "CONTAINER_METHOD: ''\nDEFAULT_JOB_RUN_METHOD: ''\nAVAILABLE_JOB_RUN_METHODS: ''\n")
    out = tmp_path / "out.json"
    result = CliRunner().invoke(app, ["register-compute-resource", "--central", "http://central",
                                      "--from-node-yaml", str(node), "--config", str(out), *option])
    assert result.exit_code == 0, result.output
    config = ComputeResourceConfig.read(out)
    assert config.container_method == ("none" if option else "docker")
    assert container_method_for(config.container_method, None) == "none"


def test_register_takes_a_private_pubsub_origin_and_refuses_a_malformed_one(tmp_path):
    out = tmp_path / "c.json"
    result = CliRunner().invoke(app, ["register-compute-resource", "--central", "http://127.0.0.1:9",
                                      "--pubsub-origin", "127.0.0.1:9", "--config", str(out)])
    assert result.exit_code == 0, result.output
    assert ComputeResourceConfig.read(out).pubsub_origin == "127.0.0.1:9"
    bad = CliRunner().invoke(app, ["register-compute-resource", "--central", "http://127.0.0.1:9",
                                   "--pubsub-origin", "http://x/y", "--config", str(tmp_path / "d.json")])
    assert bad.exit_code == 1 and "pubsub_origin" in bad.output and not (tmp_path / "d.json").exists()

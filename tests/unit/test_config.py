import json
import stat

import pytest
from typer.testing import CliRunner

from dendro_prefect.cli import app
from dendro_prefect.config import ComputeResourceConfig, ConfigError, config_from_node_yaml
from dendro_prefect.protocol.signing import generate_keypair, verify_resource_code


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

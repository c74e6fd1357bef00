"""`dendro-prefect up`'s decisions that need no server: which pools a resource needs, and its options."""

from __future__ import annotations

from pathlib import Path

import pytest

from dendro_prefect.config import ComputeResourceConfig
from dendro_prefect.up import UpError, options_for_pools, pools_of, with_defaults
from tests.unit.fakes import RESOURCE_ID, RESOURCE_KEY

CONFIG_FILE = Path("/lab/.dendro_compute_resource.json")


def config(*methods: str) -> ComputeResourceConfig:
    return ComputeResourceConfig(compute_resource_id=RESOURCE_ID, compute_resource_private_key=RESOURCE_KEY,
                                 available_job_run_methods=list(methods))


def test_a_resource_gets_the_pools_of_its_run_methods_only_and_the_controllers():
    assert pools_of(config("local")) == {"dendro-controller": "process", "local": "dendro-local"}
    assert pools_of(config("slurm", "aws_batch", "kubernetes")) == {
        "dendro-controller": "process", "slurm": "dendro-slurm", "aws-batch": "dendro-aws-batch",
        "kubernetes": "dendro-kubernetes"}


def test_limits_and_settings_are_read_per_pool_values_as_json_where_they_parse():
    pools = pools_of(config("local", "slurm"))
    limits, variables = options_for_pools(pools, CONFIG_FILE, ["local=2", "slurm=5"],
                                          ["slurm.partition=gpu", "slurm.time_margin_sec=120", 'local.env={"A": "1"}'])
    assert limits == {"local": 2, "slurm": 5}
    assert variables == {"slurm": {"partition": "gpu", "time_margin_sec": 120}, "local": {"env": {"A": "1"}}}


def test_a_configuration_of_another_name_is_the_job_pools_config_file_default():
    other = Path("/lab/resource-a.json")
    _, variables = options_for_pools(pools_of(config("local")), other, [], [])
    assert variables == {"local": {"config_file": str(other)}}


@pytest.mark.parametrize("limits, settings, error", [
    (["slurm=2"], [], "--concurrency-limit slurm: not a job pool of this resource (dendro-controller, local)"),
    (["local=two"], [], "--concurrency-limit local=two: not a whole number"),
    (["local"], [], "--concurrency-limit 'local' is not KEY=VALUE"),
    ([], ["partition=gpu"], "--set partition: not POOL.VARIABLE of a job pool of this resource"),
    ([], ["dendro-controller.env=x"], "--set dendro-controller.env: not POOL.VARIABLE of a job pool of this resource"),
])
def test_an_option_that_names_no_pool_of_the_resource_is_refused_with_the_reason(limits, settings, error):
    with pytest.raises(UpError) as refused:
        options_for_pools(pools_of(config("local")), CONFIG_FILE, limits, settings)
    assert str(refused.value) == error


def test_a_setting_sets_the_default_of_a_variable_the_template_has_and_refuses_another():
    template = {"variables": {"properties": {"partition": {"type": "string"}, "qos": {"type": "string"}}}}
    assert with_defaults(template, {"partition": "gpu"}, "slurm")["variables"]["properties"]["partition"] == {
        "type": "string", "default": "gpu"}
    with pytest.raises(UpError, match=r"^--set slurm.partiton: the pool has no such variable \(partition, qos\)$"):
        with_defaults(template, {"partiton": "gpu"}, "slurm")

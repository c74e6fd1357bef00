"""`.dendro_compute_resource.json`: who this compute resource (Dendro 0.2) or compute client (Dendro 0.6) is,
and which central it talks to; its `protocol` says which.

The file holds the private key, so it is written with mode 0600 and never overwritten.
It lives in the dendro-prefect home (`$DENDRO_PREFECT_HOME`, `~/.dendro-prefect` by default), as
Prefect's own settings live in `~/.prefect`: `register-compute-resource` writes it there, and the
subscription flow and every worker of the user read it from there, whatever directory Prefect runs
them in. An explicit path (`--config`, the flow's and the pools' `config_file`) chooses another file.
The original daemon's `.dendro-compute-resource-node.yaml` can be imported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from .protocol.models import RunMethod, describe_validation_error
from .protocol.signing import public_key_of

CONFIG_FILE_NAME = ".dendro_compute_resource.json"
NODE_YAML_FILE_NAME = ".dendro-compute-resource-node.yaml"
HOME_ENV = "DENDRO_PREFECT_HOME"
DEFAULT_CENTRAL_URL = "https://dendro.vercel.app"

ContainerMethod = Literal["docker", "apptainer", "singularity", "none"]


class ConfigError(ValueError):
    """The configuration file is missing, malformed or inconsistent."""


def dendro_prefect_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".dendro-prefect").expanduser()


def config_path(explicit: str | Path | None = None) -> Path:
    """The configuration file: `explicit` (relative to the working directory) if given, else the one in
    the dendro-prefect home. Absolute, so that messages say exactly which file was meant."""
    return Path(explicit).expanduser().absolute() if explicit else dendro_prefect_home() / CONFIG_FILE_NAME


class SiteConfig(BaseModel):
    """What a compute resource (0.2) and a compute client (0.6) configure alike: where jobs run."""

    model_config = ConfigDict(extra="forbid")

    central_url: str = DEFAULT_CENTRAL_URL
    name: str = "dendro-prefect"
    container_method: ContainerMethod = "docker"
    default_job_run_method: RunMethod = "local"
    available_job_run_methods: list[RunMethod] = ["local"]
    pubsub_origin: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$",
        description="host:port of the PubNub-compatible server the central publishes to, in place of PubNub's "
                    "own: set it only for a central whose PubSub is a private PubNub-compatible endpoint (a "
                    "local central of tests or the demo); TLS unless the host is loopback. Unset: PubNub.")

    KEY_FIELD: ClassVar[str]  # the field that holds the private key

    def write(self, path: Path) -> None:
        """Create `path` with mode 0600 (and its directory, 0700); refuse to replace an existing file."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        document = self.model_dump(mode="json")
        document[self.KEY_FIELD] = getattr(self, self.KEY_FIELD).get_secret_value()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ConfigError(f"{path} exists already; refusing to overwrite it") from None
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")

    @classmethod
    def read(cls, path: str | Path | None = None) -> "SiteConfig":
        """The configuration at `path`, or in the dendro-prefect home (`config_path`), of this class's protocol."""
        config = read_config(path)
        if not isinstance(config, cls):
            raise ConfigError(f"{config_path(path)} configures a {PROTOCOL_NAMES[config.protocol]}, not a "
                              f"{PROTOCOL_NAMES[cls.model_fields['protocol'].default]}")
        return config


class ComputeResourceConfig(SiteConfig):
    """A compute resource of the Dendro 0.2 protocol (flatironinstitute/dendro)."""

    KEY_FIELD: ClassVar[str] = "compute_resource_private_key"
    protocol: Literal["dendro-0.2"] = "dendro-0.2"
    compute_resource_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    compute_resource_private_key: SecretStr

    @field_validator("compute_resource_private_key")
    @classmethod
    def _is_hex_seed(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise ValueError("must be 64 lowercase hex characters (an Ed25519 seed)")
        return value

    @model_validator(mode="after")
    def _key_matches_id(self) -> "ComputeResourceConfig":
        if public_key_of(self.compute_resource_private_key.get_secret_value()) != self.compute_resource_id:
            raise ValueError("compute_resource_private_key does not belong to compute_resource_id")
        return self

    @property
    def private_key(self) -> str:
        return self.compute_resource_private_key.get_secret_value()

    @property
    def identity(self) -> str:
        return self.compute_resource_id


class ResourceRoute(BaseModel):
    """Where a Dendro 0.6 job goes by its required resources (its only mark of where it should run; a 0.2 job names
    its `runMethod`): to `run_method`'s pool when it needs at least `min_gpus` GPUs and no more than each bound set."""

    model_config = ConfigDict(extra="forbid")

    run_method: RunMethod
    min_gpus: int = Field(default=0, ge=0)
    max_gpus: int | None = Field(default=None, ge=0)
    max_cpus: int | None = Field(default=None, ge=0)
    max_memory_gb: float | None = Field(default=None, ge=0)
    max_time_sec: float | None = Field(default=None, gt=0)

    def takes(self, num_cpus: int, num_gpus: int, memory_gb: float, time_sec: float) -> bool:
        bounds = ((num_gpus, self.max_gpus), (num_cpus, self.max_cpus), (memory_gb, self.max_memory_gb),
                  (time_sec, self.max_time_sec))
        return num_gpus >= self.min_gpus and all(bound is None or value <= bound for value, bound in bounds)


class ComputeClientConfig(SiteConfig):
    """A compute client of a Dendro 0.6 service (magland/dendro): the code of the service's registration page,
    and the service it serves. `central_url` is the service's API (the SDK's DENDRO_API_URL)."""

    KEY_FIELD: ClassVar[str] = "compute_client_private_key"
    protocol: Literal["dendro-0.6"] = "dendro-0.6"
    compute_client_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    compute_client_private_key: SecretStr
    compute_client_name: str
    service_name: str = Field(min_length=1)
    resource_routes: list[ResourceRoute] = Field(
        default=[], description="The pools of jobs by their required resources: the first route that takes a job "
                                "decides its run method; a job no route takes goes to default_job_run_method.")

    @model_validator(mode="after")
    def _routes_to_available_methods(self) -> "ComputeClientConfig":
        for index, route in enumerate(self.resource_routes):
            if route.run_method not in self.available_job_run_methods:
                raise ValueError(f"resource_routes[{index}] routes to {route.run_method}, which is not in "
                                 f"available_job_run_methods {self.available_job_run_methods}")
        return self

    def run_method_of(self, num_cpus: int, num_gpus: int, memory_gb: float, time_sec: float) -> RunMethod:
        """The run method of a job that requires these resources."""
        for route in self.resource_routes:
            if route.takes(num_cpus, num_gpus, memory_gb, time_sec):
                return route.run_method
        return self.default_job_run_method

    @field_validator("compute_client_private_key")
    @classmethod
    def _not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @property
    def private_key(self) -> str:
        return self.compute_client_private_key.get_secret_value()

    @property
    def identity(self) -> str:
        return self.compute_client_id


PROTOCOL_NAMES = {"dendro-0.2": "Dendro 0.2 compute resource", "dendro-0.6": "Dendro 0.6 compute client"}
AnyConfig = Annotated[Union[ComputeResourceConfig, ComputeClientConfig], Field(discriminator="protocol")]


def read_config(path: str | Path | None = None) -> ComputeResourceConfig | ComputeClientConfig:
    """The configuration at `path`, or in the dendro-prefect home, of whichever protocol it names (a file
    without `protocol`, written before there were two, is a 0.2 compute resource's)."""
    path = config_path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; run `dendro-prefect register-compute-resource` (Dendro 0.2) or "
                          "`dendro-prefect register-compute-client` (Dendro 0.6) first") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not JSON: {error}") from None
    if isinstance(document, dict):
        document.setdefault("protocol", "dendro-0.2")
    try:
        return TypeAdapter(AnyConfig).validate_python(document)
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe_validation_error(error)}") from None


def config_from_node_yaml(path: Path, central_url: str, container_method: str | None = None) -> ComputeResourceConfig:
    """Translate the original daemon's YAML node file into our configuration. `container_method`, if
    given, replaces the file's `CONTAINER_METHOD`; an empty one means docker, as for the original daemon
    (which runs an app without `appImage` as a plain process whatever it says: so do the workers)."""
    try:
        node = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    if not isinstance(node, dict):
        raise ConfigError(f"{path} is not a YAML mapping")
    methods = [m.strip() for m in str(node.get("AVAILABLE_JOB_RUN_METHODS") or "local").split(",") if m.strip()]
    document = {
        "compute_resource_id": node.get("COMPUTE_RESOURCE_ID"),
        "compute_resource_private_key": node.get("COMPUTE_RESOURCE_PRIVATE_KEY"),
        "central_url": central_url,
        "container_method": container_method or node.get("CONTAINER_METHOD") or "docker",
        "default_job_run_method": node.get("DEFAULT_JOB_RUN_METHOD") or "local",
        "available_job_run_methods": methods,
    }
    try:
        return ComputeResourceConfig.model_validate(document)
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe_validation_error(error)}") from None

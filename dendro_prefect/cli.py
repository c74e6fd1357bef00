"""The `dendro-prefect` command (typer, as Prefect's own CLI)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from .config import (
    ComputeClientConfig,
    ComputeResourceConfig,
    ConfigError,
    config_from_node_yaml,
    config_path,
    read_config,
)
from .protocol.models import ProtocolError, describe_validation_error
from .protocol.signing import generate_keypair, make_resource_code
from .protocol.v06.client import DEFAULT_API_URL
from .protocol.v06.registration import read_registration_code, registration_page
from .stand_in.cli import stand_in_app

app = typer.Typer(no_args_is_help=True, help="A Dendro compute resource built on Prefect.")
app.add_typer(stand_in_app, name="stand-in")


@app.command("register-compute-resource")
def register_compute_resource(
    central: str = typer.Option(..., "--central", help="URL of the Dendro central service."),
    name: str = typer.Option("dendro-prefect", help="Name shown for this compute resource."),
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="Where to write the configuration (default: .dendro_compute_resource.json in the "
        "dendro-prefect home, $DENDRO_PREFECT_HOME or ~/.dendro-prefect, where the controller and the workers "
        "look for it)."),
    from_node_yaml: Optional[Path] = typer.Option(
        None, "--from-node-yaml", help="Import the keys of the original daemon's .dendro-compute-resource-node.yaml."
    ),
    container_method: Optional[str] = typer.Option(
        None, help="docker (the default), apptainer, singularity or none; apps without an image run as plain "
        "processes whatever it says. With --from-node-yaml it replaces the file's CONTAINER_METHOD."),
    pubsub_origin: Optional[str] = typer.Option(
        None, help="host:port of a private PubNub-compatible server the central publishes to (a local central, "
        "e.g. `dendro-prefect stand-in serve`); default: PubNub itself."),
) -> None:
    """Create this compute resource's key pair and configuration, and print its registration link."""
    config_file = config_path(config_file)
    try:
        if from_node_yaml is not None:
            config = config_from_node_yaml(from_node_yaml, central, container_method)
            config = ComputeResourceConfig.model_validate({**config.model_dump(), "pubsub_origin": pubsub_origin})
        else:
            resource_id, private_key = generate_keypair()
            config = ComputeResourceConfig(
                compute_resource_id=resource_id, compute_resource_private_key=private_key,
                central_url=central, name=name, container_method=container_method or "docker",
                pubsub_origin=pubsub_origin,
            )
        config.write(config_file)
    except (ConfigError, ValueError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1)
    code = make_resource_code(config.private_key)
    typer.echo(f"Wrote {config_file} (mode 0600) for compute resource {config.compute_resource_id}")
    typer.echo("Open this link within 5 minutes to register it:")
    typer.echo(f"{config.central_url.rstrip('/')}/register-compute-resource/{config.compute_resource_id}/{code}")


@app.command("register-compute-client")
def register_compute_client(
    service: str = typer.Option(..., "--service", help="The Dendro 0.6 service whose jobs this client runs."),
    name: str = typer.Option(..., "--name", help="This compute client's name (unique within the service)."),
    api_url: str = typer.Option(DEFAULT_API_URL, "--api-url", help="The service's API and web page (dendro 0.6's "
                                "DENDRO_API_URL)."),
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="Where to write the configuration (default: .dendro_compute_resource.json in the "
        "dendro-prefect home, where the controller and the workers look for it)."),
    container_method: str = typer.Option("docker", help="docker, apptainer, singularity or none."),
    pubsub_origin: Optional[str] = typer.Option(
        None, help="host:port of a private PubNub-compatible server the service publishes to (a local service, "
        "e.g. `dendro-prefect stand-in serve`); default: PubNub itself."),
) -> None:
    """Register this host as a compute client of a Dendro 0.6 service: open the printed link, register there
    (signed in with GitHub), and paste the code the page shows (read without echo; from standard input when it
    is not a terminal)."""
    config_file = config_path(config_file)
    if config_file.exists():
        _fail(ConfigError(f"{config_file} exists already; refusing to overwrite it"))
    typer.echo("Open this link, register the compute client there, and paste the code it shows:")
    typer.echo(registration_page(api_url, service, name))
    text = typer.prompt("Code", hide_input=True) if sys.stdin.isatty() else sys.stdin.readline()
    try:
        code = read_registration_code(text)
        config = ComputeClientConfig(
            compute_client_id=code.computeClientId, compute_client_private_key=code.computeClientPrivateKey,
            compute_client_name=code.computeClientName, service_name=service, central_url=api_url,
            container_method=container_method, pubsub_origin=pubsub_origin)
        config.write(config_file)
    except ValidationError as error:
        _fail(ConfigError(describe_validation_error(error)))
    except (ConfigError, ProtocolError) as error:
        _fail(error)
    typer.echo(f"Wrote {config_file} (mode 0600) for compute client {code.computeClientName} "
               f"({code.computeClientId}) of service {service}")
    typer.echo(f"Configure its compute slots at {api_url.rstrip('/')}/compute_client/{code.computeClientId}")


@app.command()
def demo(
    workdir: Path = typer.Option(Path(".demo"), help="Scratch directory of the demo (wiped at start)."),
    sdk_venv: Path = typer.Option(Path(".venv-sdk"), help="Virtual environment with the dendro SDK for the app."),
    timeout: float = typer.Option(300, help="Seconds to wait for the job."),
    keep_running: bool = typer.Option(False, help="Keep the servers and workers running after the job."),
    container_method: str = typer.Option("auto", help="docker, none, or auto: docker where an engine answers."),
    app: str = typer.Option("letter_count", help="letter_count, or mountainsort5: a spike sort of a synthetic "
                            "recording, its units compared with the recording's ground truth."),
    database: str = typer.Option("postgres", help="The Prefect server's database: postgres (a server of its own) "
                                 "or sqlite (one writer at a time: slower with many jobs)."),
    dendro: str = typer.Option("0.2", help="The Dendro protocol: 0.2 (a compute resource of a central) or 0.6 (a "
                               "compute client of a service; the app hello_world, a plain process under the dendro "
                               "0.6.22 SDK of --sdk-venv)."),
) -> None:
    """Run one real Dendro job from submitted to completed through Prefect on this machine."""
    from .demo import DEMO_APPS, run_demo
    from .prefect_database import DATABASES

    if app not in DEMO_APPS:
        typer.echo(f"Error: no demo app {app!r}; choose one of {', '.join(DEMO_APPS)}", err=True)
        raise typer.Exit(2)
    if database not in DATABASES:
        typer.echo(f"Error: no database {database!r}; choose one of {', '.join(DATABASES)}", err=True)
        raise typer.Exit(2)
    if dendro not in ("0.2", "0.6"):
        typer.echo(f"Error: no Dendro protocol {dendro!r}; choose 0.2 or 0.6", err=True)
        raise typer.Exit(2)
    run_demo(workdir, sdk_venv, timeout, keep_running, container_method, app, database, dendro)


def _fail(error: Exception) -> None:
    """The error on one line, exit code 1."""
    typer.echo(f"Error: {' '.join(str(error).split())}", err=True)
    raise typer.Exit(1)


@app.command()
def up(
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="The compute resource's configuration (default: .dendro_compute_resource.json in the "
        "dendro-prefect home). The workers run in its directory; our Prefect server keeps its database in "
        "`prefect/` there."),
    database: str = typer.Option("postgres", help="Our Prefect server's database: postgres (a server of its own) or "
                                 "sqlite. Ignored where PREFECT_API_URL names a server."),
    concurrency_limit: list[str] = typer.Option([], help="POOL=N: the pool's concurrency limit (repeatable)."),
    set_variable: list[str] = typer.Option([], "--set", help="POOL.VARIABLE=VALUE: a job variable's default in the "
                                           "pool's template, e.g. slurm.partition=gpu (VALUE as JSON, else text; "
                                           "repeatable)."),
) -> None:
    """Run this compute resource on this host until Ctrl-C: Prefect server (unless PREFECT_API_URL names one),
    the work pools of its run methods, their deployments and workers, and the subscription flow."""
    import os

    from rich.console import Console

    from .prefect_database import DATABASES
    from .up import UpError, UpOptions, options_for_pools, pools_of, run_up

    try:
        if database not in DATABASES:
            raise UpError(f"no database {database!r}; choose one of {', '.join(DATABASES)}")
        config_file = config_path(config_file).resolve()
        config = read_config(config_file)
        limits, variables = options_for_pools(pools_of(config), config_file, concurrency_limit, set_variable)
        options = UpOptions(config_file, database, limits, variables)
        run_up(options, config, os.environ.get("PREFECT_API_URL"), Console())
    except (UpError, ConfigError, RuntimeError) as error:
        _fail(error)


@app.command("start-subscription")
def start_subscription(
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="The compute resource's configuration (default: .dendro_compute_resource.json in the "
        "dendro-prefect home)."),
) -> None:
    """Start the resource's subscription flow run on the dendro-controller pool (PREFECT_API_URL), cancelling one an
    earlier controller left unfinished: what a service manager runs once the controller's worker is up."""
    import asyncio

    from .up import start_subscription as start

    try:
        config_file = config_path(config_file).resolve()
        name, leftover = asyncio.run(start(config_file, read_config(config_file)))
    except (ConfigError, RuntimeError, OSError) as error:
        _fail(error)
    if leftover:
        typer.echo(f"Cancelled the subscription flow run {leftover} an earlier controller left unfinished")
    typer.echo(f"Started the subscription flow run {name}")


@app.command()
def status(json_output: bool = typer.Option(False, "--json", help="Print the status as JSON.")) -> None:
    """Work pools, workers, running jobs and controller heartbeats, from the Prefect API (PREFECT_API_URL)."""
    import asyncio

    from rich.console import Console

    from .status import StatusError, collect_status, render

    try:
        report = asyncio.run(collect_status())
    except StatusError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1)
    if json_output:
        typer.echo(report.model_dump_json(indent=2))
    else:
        render(report, Console())


if __name__ == "__main__":
    app()

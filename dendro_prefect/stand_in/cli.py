"""`dendro-prefect stand-in ...`: serve the stand-in and administer it as the GUI would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional
from urllib.parse import urlparse

import typer
from rich.console import Console
from rich.table import Table

from .admin_client import AdminError, StandInAdmin

stand_in_app = typer.Typer(no_args_is_help=True, help="The local stand-in of the Dendro central service.")
DATA_DIR_OPTION = typer.Option(Path(".dendro-central"), "--data-dir", envvar="DENDRO_CENTRAL_DIR",
                               help="The stand-in's data directory (database, blobs, central.json).")


def _admin(data_dir: Path) -> StandInAdmin:
    try:
        return StandInAdmin.from_data_dir(data_dir)
    except AdminError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1)


def _pairs(items: List[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            typer.echo(f"Error: {what} {item!r} is not NAME=VALUE", err=True)
            raise typer.Exit(2)
        pairs.append((key, value))
    return pairs


def _json_or_text(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


@stand_in_app.command()
def serve(
    data_dir: Path = DATA_DIR_OPTION,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(0, help="Port; 0 picks a free one."),
    mock_pubsub: bool = typer.Option(False, help="Answer mock-subscribe-key so controllers poll only."),
) -> None:
    """Run the stand-in until interrupted."""
    from .server import serve as run

    run(data_dir, host, port, mock_pubsub)


@stand_in_app.command()
def approve(
    link: str = typer.Argument(..., help="The registration link printed by register-compute-resource."),
    name: str = typer.Option("dendro-prefect"),
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Complete a compute resource's registration, as the resource owner does in the GUI."""
    parts = urlparse(link).path.rstrip("/").split("/")
    if len(parts) < 3 or parts[-3] != "register-compute-resource":
        typer.echo("Error: not a registration link (…/register-compute-resource/ID/CODE)", err=True)
        raise typer.Exit(2)
    _run(lambda: _admin(data_dir).approve(parts[-2], parts[-1], name))
    typer.echo(f"Registered compute resource {parts[-2]}")


@stand_in_app.command("create-project")
def create_project(name: str, data_dir: Path = DATA_DIR_OPTION) -> None:
    typer.echo(_run(lambda: _admin(data_dir).create_project(name)))


@stand_in_app.command()
def upload(
    project_id: str, path: Path, file_name: Optional[str] = typer.Option(None, "--as"),
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Upload a local file into a project; prints its file id."""
    typer.echo(_run(lambda: _admin(data_dir).upload_file(project_id, file_name or path.name, path.read_bytes())))


@stand_in_app.command("set-apps")
def set_apps(
    resource_id: str,
    app: List[str] = typer.Option(..., "--app", help="NAME=SPEC_URI (file://, https://); repeat for each app."),
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    apps = [{"name": n, "specUri": u} for n, u in _pairs(app, "--app")]
    _run(lambda: _admin(data_dir).set_apps(resource_id, apps))
    typer.echo(f"{len(apps)} app(s) set")


@stand_in_app.command("create-job")
def create_job(
    resource_id: str = typer.Option(..., "--resource"),
    project_id: str = typer.Option(..., "--project"),
    processor: str = typer.Option(...),
    input: List[str] = typer.Option([], "--input", help="NAME=FILE_NAME in the project"),
    output: List[str] = typer.Option([], "--output", help="NAME=FILE_NAME to create"),
    param: List[str] = typer.Option([], "--param", help="NAME=VALUE (JSON, or text)"),
    spec: Optional[Path] = typer.Option(None, help="spec.json holding the processor (else the resource's reported spec)"),
    run_method: Optional[str] = typer.Option("local", help="local, slurm, aws_batch or kubernetes; 'none' for no run method"),
    cpus: int = 1, gpus: int = 0, memory_gb: float = 1.0, time_sec: float = 3600.0,
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Create a pending job as the GUI does; prints its job id."""
    processor_spec = None
    if spec is not None:
        app_spec = json.loads(spec.read_text())
        processor_spec = next((p for p in app_spec.get("processors", []) if p.get("name") == processor), None)
        if processor_spec is None:
            typer.echo(f"Error: {spec} has no processor {processor}", err=True)
            raise typer.Exit(2)
    request = {
        "computeResourceId": resource_id,
        "projectId": project_id,
        "processorName": processor,
        "inputFiles": [{"name": n, "fileName": f} for n, f in _pairs(input, "--input")],
        "outputFiles": [{"name": n, "fileName": f} for n, f in _pairs(output, "--output")],
        "inputParameters": [{"name": n, "value": _json_or_text(v)} for n, v in _pairs(param, "--param")],
        "processorSpec": processor_spec,
        "requiredResources": {"numCpus": cpus, "numGpus": gpus, "memoryGb": memory_gb, "timeSec": time_sec},
        "runMethod": None if run_method == "none" else run_method,
    }
    typer.echo(_run(lambda: _admin(data_dir).create_job(request)))


@stand_in_app.command()
def jobs(resource_id: Optional[str] = typer.Option(None, "--resource"), data_dir: Path = DATA_DIR_OPTION) -> None:
    """List jobs with their statuses and outputs."""
    table = Table("job", "processor", "run method", "status", "outputs", "error")
    for job in _run(lambda: _admin(data_dir).jobs(resource_id)):
        outputs = ", ".join(f"{o['name']}={o['fileName']}" for o in job["outputFiles"] if o.get("downloadUrl"))
        table.add_row(job["jobId"], job["processorName"], str(job.get("runMethod")), job["status"], outputs,
                      job.get("error") or "")
    Console().print(table)


@stand_in_app.command()
def job(job_id: str, data_dir: Path = DATA_DIR_OPTION) -> None:
    """Show one job as JSON (without its private key)."""
    typer.echo(json.dumps(_run(lambda: _admin(data_dir).job(job_id)), indent=2))


@stand_in_app.command()
def output(job_id: str, name: str, data_dir: Path = DATA_DIR_OPTION) -> None:
    """Print a job output (or `_console_output`)."""
    typer.echo(_run(lambda: _admin(data_dir).output(job_id, name)).decode(errors="replace"))


@stand_in_app.command("approve-job")
def approve_job(job_id: str, data_dir: Path = DATA_DIR_OPTION) -> None:
    """Approve a job held for approval (10 jobs of its project were pending or running), as its owner does."""
    _run(lambda: _admin(data_dir).approve_job(job_id))
    typer.echo(f"Approved {job_id}")


@stand_in_app.command("delete-job")
def delete_job(job_id: str, data_dir: Path = DATA_DIR_OPTION) -> None:
    _run(lambda: _admin(data_dir).delete_job(job_id))
    typer.echo(f"Deleted {job_id}")


def _run(call):
    try:
        return call()
    except AdminError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1)

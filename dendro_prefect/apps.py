"""The compute resource's apps: spec URIs loaded into app specs, looked up by processor name.

Both the subscription flow (to route and to report the spec) and the workers (to launch) use it.
A spec that cannot be loaded is recorded with its reason and skipped; the other apps keep working.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests

from .protocol.models import AppSpec, ComputeResourceApp, ProtocolError, parse


class AppSpecError(ValueError):
    """An app's spec URI cannot be loaded or does not hold a valid spec."""


def raw_spec_url(uri: str) -> str:
    """GitHub blob pages become raw file URLs (with a cache-buster), as the original daemon does."""
    if uri.startswith("https://github.com/") and "/blob/" in uri:
        raw = uri.replace("https://github.com/", "https://raw.githubusercontent.com/", 1).replace("/blob/", "/", 1)
        return f"{raw}?cachebust={secrets.token_hex(4)}"
    return uri


def local_spec_uri(app_dir: Path, workdir: Path, image: str | None = None, executable: str = "/app/main.py") -> str:
    """An app of this repository as a spec URI: its spec.json as it is (a plain process), or a copy in
    `workdir` naming a locally built image and the app's executable in it."""
    if image is None:
        return (app_dir / "spec.json").as_uri()
    spec = json.loads((app_dir / "spec.json").read_text())
    spec.update(appImage=image, appExecutable=executable, executable=executable)
    path = workdir / f"{app_dir.name}_image_spec.json"
    path.write_text(json.dumps(spec, indent=2))
    return path.as_uri()


def build_app_image(app_dir: Path, tag: str) -> None:
    """An image of an app of this repository, built here (scripts/build-app-image.sh: no registry needed)."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "build-app-image.sh"
    subprocess.run(["bash", str(script), str(app_dir), tag], check=True, capture_output=True, text=True, timeout=1800)


def load_spec(uri: str, timeout: float = 30.0) -> tuple[AppSpec, Path | None]:
    """Load an app spec; for a file:// spec also return its directory, against which a relative
    `appExecutable` resolves."""
    try:
        if uri.startswith("file://"):
            path = Path(unquote(urlparse(uri).path))
            document, directory = json.loads(path.read_text()), path.parent
        elif uri.startswith(("http://", "https://")):
            response = requests.get(raw_spec_url(uri), timeout=timeout)
            response.raise_for_status()
            document, directory = response.json(), None
        else:
            raise AppSpecError(f"spec URI {uri} is neither file:// nor http(s)://")
    except (OSError, ValueError, requests.RequestException) as error:
        if isinstance(error, AppSpecError):
            raise
        raise AppSpecError(f"spec URI {uri} cannot be loaded: {type(error).__name__}: {error}") from None
    try:
        return parse(AppSpec, document, f"app spec at {uri}"), directory
    except ProtocolError as error:
        raise AppSpecError(str(error)) from None


@dataclass
class LoadedApp:
    name: str
    spec_uri: str
    spec: AppSpec
    directory: Path | None

    @property
    def executable(self) -> str:
        """The app's entry point: `/app/main.py` by default in an image; a relative path of a local
        app resolves against its spec's directory."""
        executable = self.spec.appExecutable or self.spec.executable
        if self.spec.appImage:
            return executable or "/app/main.py"
        if not executable:
            raise AppSpecError(f"app {self.name} has neither appImage nor appExecutable")
        if self.directory is not None and not Path(executable).is_absolute():
            return str(self.directory / executable)
        return executable


@dataclass
class AppCatalog:
    apps: list[LoadedApp] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # app name -> why its spec did not load

    @classmethod
    def load(cls, apps: list[ComputeResourceApp]) -> "AppCatalog":
        catalog = cls()
        for app in apps:
            try:
                spec, directory = load_spec(app.specUri)
            except AppSpecError as error:
                catalog.errors[app.name] = str(error)
            else:
                catalog.apps.append(LoadedApp(app.name, app.specUri, spec, directory))
        return catalog

    def for_processor(self, processor_name: str) -> LoadedApp:
        """The first app with this processor, as the original daemon picks; else why there is none."""
        for app in self.apps:
            if app.spec.processor(processor_name) is not None:
                return app
        reason = f"no app of this compute resource has processor {processor_name}"
        if self.errors:
            reason += " (apps not loaded: " + "; ".join(f"{n}: {e}" for n, e in self.errors.items()) + ")"
        raise AppSpecError(reason)

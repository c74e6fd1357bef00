"""The project's spike-sorting app (apps/mountainsort5) as a job: for `dendro-prefect demo --app
mountainsort5`, the tests and bench/spike_sorting.py.

The app has its own virtual environment (apps/mountainsort5/install.sh) and image
(scripts/build-app-image.sh); the synthetic recording and the comparison of a sorting with its ground
truth run with that environment's Python, so dendro-prefect itself needs no spikeinterface.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .apps import build_app_image, local_spec_uri

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "apps" / "mountainsort5"
IMAGE = "dendro-mountainsort5:local"
ELECTRICAL_SERIES_PATH = "/acquisition/ElectricalSeries"
PROCESSOR = "mountainsort5"
APP_PYTHON = APP_DIR / ".venv" / "bin" / "python"  # made by install.sh


class SortingCheckError(RuntimeError):
    """A sorting or its ground truth could not be read."""


@dataclass(frozen=True)
class Recording:
    nwb: Path
    ground_truth: Path


def install_app() -> Path:
    """The app's virtual environment (made on first use, at once when up to date); its Python."""
    subprocess.run(["bash", str(APP_DIR / "install.sh")], check=True, capture_output=True, text=True, timeout=1800)
    return APP_PYTHON


def build_image(tag: str = IMAGE) -> None:
    build_app_image(APP_DIR, tag)


def spec_uri(workdir: Path, image: str | None = None) -> str:
    """The app's spec: as is for a plain process (its `run` uses the app's venv), or naming an image."""
    return local_spec_uri(APP_DIR, workdir, image)


def make_recording(directory: Path, seed: int = 3, duration_sec: float = 30.0) -> Recording:
    """A synthetic recording (16 channels, 6 units) and its ground truth, written with the app's Python."""
    python = install_app()
    directory.mkdir(parents=True, exist_ok=True)
    nwb = directory / f"recording-{seed}.nwb"
    subprocess.run([str(python), str(APP_DIR / "synthetic.py"), str(nwb), "--seed", str(seed),
                    "--duration", str(duration_sec)], check=True, capture_output=True, text=True, timeout=300)
    return Recording(nwb, nwb.with_name(nwb.stem + ".gt.npz"))


def job_request(resource_id: str, project_id: str, input_file_name: str, run_method: str = "local",
                parameters: dict | None = None, memory_gb: float = 2.0, time_sec: int = 600) -> dict:
    """A job of the mountainsort5 processor on an uploaded NWB file (`parameters` over the defaults; a
    parameter set to None is left out)."""
    processor = json.loads((APP_DIR / "spec.json").read_text())["processors"][0]
    values = {"electrical_series_path": ELECTRICAL_SERIES_PATH, "scheme": 2, **(parameters or {})}
    return {
        "computeResourceId": resource_id, "projectId": project_id, "processorName": PROCESSOR,
        "inputFiles": [{"name": "input", "fileName": input_file_name}],
        "outputFiles": [{"name": "output", "fileName": "sorting.nwb"}],
        "inputParameters": [{"name": name, "value": value} for name, value in values.items() if value is not None],
        "processorSpec": processor,
        "requiredResources": {"numCpus": 2, "numGpus": 0, "memoryGb": memory_gb, "timeSec": time_sec},
        "runMethod": run_method,
    }


def compare_with_ground_truth(sorted_nwb: Path, recording: Recording) -> dict:
    """spikeinterface's comparison of a sorting with the ground truth (apps/mountainsort5/compare.py):
    units found, each true unit's accuracy, and `pass` (at least 5 of 6 units at accuracy ≥ 0.8, 5–9 units).
    The app's environment exists: `recording` was made with it."""
    done = subprocess.run([str(APP_PYTHON), str(APP_DIR / "compare.py"), str(sorted_nwb), str(recording.ground_truth)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode not in (0, 1):
        raise SortingCheckError(f"cannot compare {sorted_nwb.name} with the ground truth: "
                                f"{(done.stdout or done.stderr).strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])

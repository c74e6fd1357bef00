#!/usr/bin/env python3
"""mountainsort5: spike sorting of an NWB recording with MountainSort 5, written with the real dendro 0.2.x SDK.

It implements the `mountainsort5` processor of the public pc-spike-sorting app's spec (same name, inputs,
outputs and parameters, dotted ones included), so a job created for that spec runs on this app. It reads
the ElectricalSeries at `electrical_series_path` of the input NWB (remote files are streamed through the
SDK's input file), bandpass-filters and whitens it with spikeinterface, sorts it with the `mountainsort5`
package (scheme 1, 2 or 3) and writes the sorting as an NWB units table (spike times in seconds).
Whitening uses a fixed seed and BLAS one thread (unless OMP/OPENBLAS/MKL_NUM_THREADS are set), so one
input gives one sorting, and other processes on the cores do not slow the sort down by 10x.

The heavy libraries are imported inside the processor, so the SDK's parent process and spec generation
(`SPEC_OUTPUT_FILE=spec.json ./main.py`) need only dendro. No `from __future__ import annotations`: the SDK
reads the context's type from the run method's annotations, which must be classes, not strings.
"""

import os
import resource
import tempfile
import time
from typing import Any

from dendro.sdk import App, BaseModel, Field, InputFile, OutputFile, ProcessorBase


class PreprocessingParameters(BaseModel):
    freq_min: int = Field(default=300, description="High-pass filter cutoff frequency")
    freq_max: int = Field(default=6000, description="Low-pass filter cutoff frequency")
    filter: bool = Field(default=True, description="Enable or disable filter")
    whiten: bool = Field(default=True, description="Enable or disable whiten")


class Scheme2Parameters(BaseModel):
    scheme2_phase1_detect_channel_radius: int = Field(
        default=200,
        description="Channel radius for excluding events that are too close in time during phase 1 of scheme 2")
    scheme2_detect_channel_radius: int = Field(
        default=50,
        description="Channel radius for excluding events that are too close in time during phase 2 of scheme 2")
    scheme2_max_num_snippets_per_training_batch: int = Field(
        default=200,
        description="Maximum number of snippets to use in each batch for training during phase 2 of scheme 2")
    scheme2_training_duration_sec: int = Field(default=300, description="Duration of training data to use in scheme 2")
    scheme2_training_recording_sampling_mode: str = Field(
        default="uniform", description="initial or uniform", json_schema_extra={"options": ["initial", "uniform"]})


class Mountainsort5Context(BaseModel):
    input: InputFile = Field(description="Input NWB file")
    output: OutputFile = Field(description="Output NWB file")
    electrical_series_path: str = Field(
        description="Path to the electrical series in the NWB file, e.g., /acquisition/ElectricalSeries")
    scheme: int = Field(default=2, description="Which sorting scheme to use: 1, 2, or 3",
                        json_schema_extra={"options": [1, 2, 3]})
    detect_threshold: float = Field(default=5.5, description="Detection threshold - recommend to use the default")
    detect_sign: int = Field(default=-1, description="Use -1 for detecting negative peaks, 1 for positive, 0 for both",
                             json_schema_extra={"options": [-1, 0, 1]})
    detect_time_radius_msec: float = Field(
        default=0.5,
        description="Determines the minimum allowable time interval between detected spikes in the same spatial region")
    snippet_T1: int = Field(default=20, description="Number of samples before the peak to include in the snippet")
    snippet_T2: int = Field(default=20, description="Number of samples after the peak to include in the snippet")
    npca_per_channel: int = Field(
        default=3, description="Number of PCA features per channel in the initial dimension reduction step")
    npca_per_subdivision: int = Field(
        default=10,
        description="Number of PCA features to compute at each stage of clustering in the isosplit6 subdivision method")
    snippet_mask_radius: int = Field(default=250, description="Radius of the mask to apply to the extracted snippets")
    scheme1_detect_channel_radius: int = Field(
        default=150, description="Channel radius for excluding events that are too close in time in scheme 1")
    # Nested models become dotted parameter names in the spec (scheme2.*, preprocessing.*). Their defaults
    # let the SDK's test mode (TEST_APP_PROCESSOR) leave them out; they do not appear in the spec.
    scheme2: Scheme2Parameters = Field(default_factory=Scheme2Parameters, description="Parameters for scheme 2")
    scheme3_block_duration_sec: int = Field(default=1800, description="Duration of each block in scheme 3")
    preprocessing: PreprocessingParameters = Field(
        default_factory=PreprocessingParameters, description="Preprocessing parameters")
    test_duration_sec: float = Field(
        default=0, description="For testing purposes: duration of the recording in seconds (0 means all)")


DESCRIPTION = """
MountainSort is a CPU-based spike sorting software package developed by Jeremy Magland and others at Flatiron Institute in collaboration with researchers at the Loren Frank lab.
"""


class Mountainsort5Processor(ProcessorBase):
    name = "mountainsort5"
    label = "MountainSort 5 spike sorter"
    description = DESCRIPTION
    tags = ["spike_sorting", "spike_sorter", "mountainsort5"]
    attributes = {"wip": True}

    @staticmethod
    def run(context: Mountainsort5Context):
        sort_nwb(context)


# ------------------------------------------------------------------------------------------------ the work

_T0 = time.monotonic()


def _log(message: str) -> None:
    print(f"[mountainsort5] {time.monotonic() - _T0:7.2f} s  {message}", flush=True)


def _value(obj: Any, name: str) -> Any:
    """A parameter of the context: a pydantic model (test mode) or the SDK's ContextObject (a job), in
    which a parameter without default that the job does not set holds pydantic's Undefined."""
    value = getattr(obj, name, None)
    if value is None or type(value).__name__ == "PydanticUndefinedType":
        return None
    return value


def _number(obj: Any, name: str, kind: type, label: str | None = None):
    value = _value(obj, name)
    label = label or name
    if value is None:
        raise ValueError(f"{label} is required")
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label} must be {'an integer' if kind is int else 'a number'}, not {value!r}") from None
    if kind is int and converted != float(value):
        raise ValueError(f"{label} must be an integer, not {value!r}")
    return converted


def _bool(obj: Any, name: str, label: str) -> bool:
    value = _value(obj, name)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{label} must be true or false, not {value!r}")


def _parameters(context: Any) -> dict:
    """All parameters, checked and converted, with their spec names."""
    es_path = _value(context, "electrical_series_path")
    if not isinstance(es_path, str) or not es_path.strip().strip("/"):
        raise ValueError("electrical_series_path is required")
    scheme2 = _value(context, "scheme2")
    preprocessing = _value(context, "preprocessing")
    p = {
        "electrical_series_path": es_path.strip(),
        "scheme": _number(context, "scheme", int),
        "detect_threshold": _number(context, "detect_threshold", float),
        "detect_sign": _number(context, "detect_sign", int),
        "detect_time_radius_msec": _number(context, "detect_time_radius_msec", float),
        "snippet_T1": _number(context, "snippet_T1", int),
        "snippet_T2": _number(context, "snippet_T2", int),
        "npca_per_channel": _number(context, "npca_per_channel", int),
        "npca_per_subdivision": _number(context, "npca_per_subdivision", int),
        "snippet_mask_radius": _number(context, "snippet_mask_radius", float),
        "scheme1_detect_channel_radius": _number(context, "scheme1_detect_channel_radius", float),
        "scheme3_block_duration_sec": _number(context, "scheme3_block_duration_sec", float),
        "test_duration_sec": _number(context, "test_duration_sec", float),
    }
    for name, kind in (("scheme2_phase1_detect_channel_radius", float), ("scheme2_detect_channel_radius", float),
                       ("scheme2_max_num_snippets_per_training_batch", int), ("scheme2_training_duration_sec", float)):
        p[f"scheme2.{name}"] = _number(scheme2, name, kind, f"scheme2.{name}")
    p["scheme2.scheme2_training_recording_sampling_mode"] = _value(scheme2, "scheme2_training_recording_sampling_mode")
    p["preprocessing.freq_min"] = _number(preprocessing, "freq_min", float, "preprocessing.freq_min")
    p["preprocessing.freq_max"] = _number(preprocessing, "freq_max", float, "preprocessing.freq_max")
    p["preprocessing.filter"] = _bool(preprocessing, "filter", "preprocessing.filter")
    p["preprocessing.whiten"] = _bool(preprocessing, "whiten", "preprocessing.whiten")

    if p["scheme"] not in (1, 2, 3):
        raise ValueError(f"scheme must be 1, 2 or 3, not {p['scheme']}")
    if p["detect_sign"] not in (-1, 0, 1):
        raise ValueError(f"detect_sign must be -1, 0 or 1, not {p['detect_sign']}")
    mode = p["scheme2.scheme2_training_recording_sampling_mode"]
    if mode not in ("initial", "uniform"):
        raise ValueError(f"scheme2.scheme2_training_recording_sampling_mode must be 'initial' or 'uniform', not {mode!r}")
    if p["test_duration_sec"] < 0:
        raise ValueError(f"test_duration_sec must be 0 (all) or positive, not {p['test_duration_sec']}")
    if p["preprocessing.filter"] and not 0 < p["preprocessing.freq_min"] < p["preprocessing.freq_max"]:
        raise ValueError("preprocessing.freq_min must be positive and below preprocessing.freq_max "
                         f"(got {p['preprocessing.freq_min']} and {p['preprocessing.freq_max']})")
    return p


def _text(h5, path: str) -> str | None:
    """A scalar string dataset of the file, or None."""
    if path not in h5:
        return None
    value = h5[path][()]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "shape") and value.shape:  # a 1-element array (e.g. experimenter)
        value = value[0]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return str(value)


def _find_electrical_series(h5) -> list[str]:
    import h5py

    found: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and obj.attrs.get("neurodata_type") in ("ElectricalSeries", b"ElectricalSeries"):
            found.append("/" + name)
    h5.visititems(visit)
    return found


def _electrode_xy(h5, series):
    """The x/y columns of the electrodes table for the series' electrodes (None when absent): the positions
    used when the table has no rel_x/rel_y, which is all that spikeinterface reads."""
    import numpy as np

    table = h5.get("general/extracellular_ephys/electrodes")
    if table is None or "x" not in table or "y" not in table or "electrodes" not in series:
        return None
    try:
        indices = np.asarray(series["electrodes"][()], dtype=int)
        xy = np.stack([np.asarray(table["x"][()], dtype=float)[indices],
                       np.asarray(table["y"][()], dtype=float)[indices]], axis=1)
    except (KeyError, ValueError, TypeError, IndexError):
        return None
    return xy if np.all(np.isfinite(xy)) else None


def _open_input(context: Any, es_path: str):
    """Open the input (a local file, or a remote one streamed with remfile by the SDK), check that it is an
    NWB file holding an ElectricalSeries at es_path, and read the metadata the output copies."""
    import h5py

    try:
        handle = context.input.get_file()  # open(local file) or remfile.File(input): renews signed URLs
    except Exception as error:  # noqa: BLE001 - the SDK raises plain Exceptions
        raise RuntimeError(f"input could not be opened: {type(error).__name__}: {error}") from None
    try:
        h5 = h5py.File(handle, "r")
    except Exception as error:  # noqa: BLE001 - h5py raises OSError, remfile may raise others
        raise ValueError(f"input is not a valid NWB file: {error}") from None
    try:
        if "nwb_version" not in h5.attrs:
            raise ValueError("input is not a valid NWB file: an HDF5 file without the nwb_version attribute")
        key = "/" + es_path.strip("/")
        if key not in h5:
            found = _find_electrical_series(h5)
            raise ValueError(f"electrical_series_path {es_path} not found in the input NWB file "
                             f"(ElectricalSeries in it: {', '.join(found) or 'none'})")
        series = h5[key]
        data = series.get("data") if isinstance(series, h5py.Group) else None
        if data is None or not isinstance(data, h5py.Dataset) or data.ndim != 2:
            raise ValueError(f"electrical_series_path {es_path} is not an ElectricalSeries "
                             "(no 2-D data: samples x channels)")
        xy = _electrode_xy(h5, series)
        subject = None
        if "general/subject" in h5:
            subject = {name: _text(h5, f"general/subject/{name}")
                       for name in ("subject_id", "age", "sex", "species", "description")}
        metadata = {
            "session_description": _text(h5, "session_description") or "mountainsort5 sorting",
            "session_start_time": _text(h5, "session_start_time"),
            "identifier": _text(h5, "identifier"),
            "subject": subject,
            "electrode_xy": xy,
        }
    finally:
        h5.close()
    return handle, key.lstrip("/"), metadata


def _write_units_nwb(path: str, sorting, t_start: float, metadata: dict, parameters: dict) -> int:
    from datetime import datetime, timezone
    from uuid import uuid4

    import numpy as np
    import pynwb
    from pynwb.file import Subject

    start = metadata.get("session_start_time")
    try:
        session_start_time = datetime.fromisoformat(start) if start else None
    except ValueError:
        session_start_time = None
    if session_start_time is None:
        session_start_time = datetime.now(timezone.utc)
    elif session_start_time.tzinfo is None:
        session_start_time = session_start_time.replace(tzinfo=timezone.utc)
    subject = None
    if metadata.get("subject"):
        fields = {k: v for k, v in metadata["subject"].items() if v is not None}
        try:
            subject = Subject(**fields)
        except Exception as error:  # noqa: BLE001 - a subject pynwb refuses is left out, not fatal
            _log(f"subject not copied to the output: {error}")
    nwbfile = pynwb.NWBFile(
        session_description=metadata["session_description"],
        identifier=str(uuid4()),
        session_start_time=session_start_time,
        subject=subject,
        source_script=f"dendro-prefect app mountainsort5 (scheme {parameters['scheme']})",
        source_script_file_name="main.py",
    )
    fs = sorting.get_sampling_frequency()
    count = 0
    for unit_id in sorting.get_unit_ids():
        frames = np.asarray(sorting.get_unit_spike_train(unit_id, segment_index=0))
        nwbfile.add_unit(id=int(unit_id), spike_times=t_start + frames / fs)
        count += len(frames)
    with pynwb.NWBHDF5IO(path, "w") as io:
        io.write(nwbfile)
    return count


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def sort_nwb(context: Any) -> None:
    p = _parameters(context)
    _log(f"scheme {p['scheme']}, electrical_series_path {p['electrical_series_path']}")
    if any(os.environ.get(name) for name in THREAD_VARIABLES):
        _sort_nwb(context, p)
        return
    # BLAS and OpenMP on one thread unless the job's environment says otherwise: mountainsort5's linear
    # algebra is small (PCA of ~1000 snippets), and OpenBLAS's threads, when other processes share the
    # cores, made its classifier fitting 10-15x slower here (33 s instead of 2 s on 2 cores).
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1):
        _sort_nwb(context, p)


def _sort_nwb(context: Any, p: dict) -> None:

    import h5py  # noqa: F401  (imported first: the SDK's input file needs it too)
    import mountainsort5 as ms5
    import spikeinterface.preprocessing as spre
    from mountainsort5.util import create_cached_recording
    from spikeinterface.extractors.nwbextractors import NwbRecordingExtractor
    _log("libraries imported")

    handle, es_key, metadata = _open_input(context, p["electrical_series_path"])
    try:
        recording = NwbRecordingExtractor(file=handle, electrical_series_path=es_key, load_channel_properties=False)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"input is not a valid NWB file: cannot read {es_key} as a recording: "
                         f"{type(error).__name__}: {error}") from None
    fs = recording.get_sampling_frequency()
    t_start = recording.get_time_info(segment_index=0).get("t_start") or 0.0
    num_samples = recording.get_num_samples(segment_index=0)
    _log(f"input: {recording.get_num_channels()} channels, {fs:g} Hz, {num_samples / fs:.1f} s, dtype {recording.get_dtype()}")
    if not recording.has_probe():
        xy = metadata["electrode_xy"]
        if xy is None or len(xy) != recording.get_num_channels():
            raise ValueError("the input NWB file's electrodes table has no positions (rel_x/rel_y or x/y)")
        try:
            recording.set_dummy_probe_from_locations(xy)
        except Exception as error:  # noqa: BLE001 - probeinterface refuses e.g. overlapping contacts
            raise ValueError(f"the input NWB file's electrode positions (x/y) cannot make a probe: {error}") from None
        _log("channel positions from the electrodes table's x/y (no rel_x/rel_y)")
    if p["test_duration_sec"] > 0:
        end = min(num_samples, int(round(fs * p["test_duration_sec"])))
        recording = recording.frame_slice(start_frame=0, end_frame=end)
        _log(f"test_duration_sec: using the first {end / fs:.1f} s")

    if p["preprocessing.filter"]:
        if p["preprocessing.freq_max"] >= fs / 2:
            raise ValueError(f"preprocessing.freq_max ({p['preprocessing.freq_max']:g}) must be below half the "
                             f"sampling rate ({fs / 2:g} Hz)")
        recording = spre.bandpass_filter(recording, freq_min=p["preprocessing.freq_min"],
                                         freq_max=p["preprocessing.freq_max"], dtype="float32")
    else:
        recording = spre.astype(recording, "float32")
    if p["preprocessing.whiten"]:
        # A fixed seed for the random chunks the whitening matrix is estimated from: the same input and
        # parameters then give the same sorting (with seed=None one run in three or so splits a unit).
        recording = spre.whiten(recording, dtype="float32", seed=0)
    _log(f"preprocessing: filter {p['preprocessing.filter']}, whiten {p['preprocessing.whiten']}")

    with tempfile.TemporaryDirectory(prefix="mountainsort5-") as tmp:
        try:
            # Chunks of about 32 MB of float32 (1-10 s): 1 s chunks, the default, take 3x as long here.
            chunk_sec = min(10.0, max(1.0, 32e6 / (4 * recording.get_num_channels() * fs)))
            cached = create_cached_recording(recording, folder=os.path.join(tmp, "preprocessed"),
                                             chunk_duration=f"{chunk_sec:.3f}s")
        except (OSError, KeyError) as error:
            raise ValueError(f"input is not a valid NWB file: reading {es_key} failed: "
                             f"{type(error).__name__}: {error}") from None
        _log("preprocessed recording written to a float32 cache")

        scheme1 = ms5.Scheme1SortingParameters(
            detect_threshold=p["detect_threshold"],
            detect_channel_radius=p["scheme1_detect_channel_radius"],
            detect_time_radius_msec=p["detect_time_radius_msec"],
            detect_sign=p["detect_sign"],
            snippet_T1=p["snippet_T1"],
            snippet_T2=p["snippet_T2"],
            snippet_mask_radius=p["snippet_mask_radius"],
            npca_per_channel=p["npca_per_channel"],
            npca_per_subdivision=p["npca_per_subdivision"],
        )
        scheme2 = ms5.Scheme2SortingParameters(
            phase1_detect_channel_radius=p["scheme2.scheme2_phase1_detect_channel_radius"],
            detect_channel_radius=p["scheme2.scheme2_detect_channel_radius"],
            phase1_detect_threshold=p["detect_threshold"],
            phase1_detect_time_radius_msec=p["detect_time_radius_msec"],
            detect_time_radius_msec=p["detect_time_radius_msec"],
            phase1_npca_per_channel=p["npca_per_channel"],
            phase1_npca_per_subdivision=p["npca_per_subdivision"],
            detect_sign=p["detect_sign"],
            detect_threshold=p["detect_threshold"],
            snippet_T1=p["snippet_T1"],
            snippet_T2=p["snippet_T2"],
            snippet_mask_radius=p["snippet_mask_radius"],
            max_num_snippets_per_training_batch=p["scheme2.scheme2_max_num_snippets_per_training_batch"],
            classifier_npca=None,
            training_duration_sec=p["scheme2.scheme2_training_duration_sec"],
            training_recording_sampling_mode=p["scheme2.scheme2_training_recording_sampling_mode"],
        )
        if p["scheme"] == 1:
            sorting = ms5.sorting_scheme1(recording=cached, sorting_parameters=scheme1)
        elif p["scheme"] == 2:
            sorting = ms5.sorting_scheme2(recording=cached, sorting_parameters=scheme2)
        else:
            scheme3 = ms5.Scheme3SortingParameters(block_sorting_parameters=scheme2,
                                                   block_duration_sec=p["scheme3_block_duration_sec"])
            sorting = ms5.sorting_scheme3(recording=cached, sorting_parameters=scheme3)
        _log(f"sorted: {len(sorting.get_unit_ids())} units")

        out_path = os.path.join(tmp, "sorting.nwb")
        spikes = _write_units_nwb(out_path, sorting, float(t_start), metadata, p)
        _log(f"output: units table of {len(sorting.get_unit_ids())} units, {spikes} spikes")
        context.output.upload(out_path)
    try:
        handle.close()
    except Exception:  # noqa: BLE001
        pass
    # The sorting process's high-water mark (Linux reports KiB): what the job needs of a node's memory.
    _log(f"done; peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


app = App(name="mountainsort5", description="MountainSort5 spike sorting", app_executable="run")
app.add_processor(Mountainsort5Processor)

if __name__ == "__main__":
    app.run()

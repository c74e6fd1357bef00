#!/usr/bin/env python3
"""A synthetic NWB recording with known ground truth, for the mountainsort5 app's tests and benchmarks.

spikeinterface's `generate_ground_truth_recording` (fixed seed) makes the traces and the spike trains;
plain pynwb writes them as an NWB file a Dendro job can take as input: an ElectricalSeries in acquisition
(int16 data with `conversion`, `starting_time` and `rate`), the electrodes table with x/y (and rel_x/rel_y)
positions, and a Subject. The ground truth goes next to it as an .npz (see `load_ground_truth`).

    python synthetic.py OUT.nwb [--duration 30] [--channels 16] [--units 6] [--seed 3]
        -> OUT.nwb and OUT.gt.npz; prints one JSON line (paths, size, seconds)

Run it with the app's venv python (install.sh); the defaults (30 s x 16 channels x 6 units, ~29 MB) sort
reliably; recordings of 10-20 s are too short for that.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ELECTRICAL_SERIES_PATH = "/acquisition/ElectricalSeries"
# Units 5-20 um from the probe plane: with spikeinterface's default (up to 50 um) some units of most seeds
# have a peak SNR of 3-5, below any sorter's detection threshold (5.5 here).
UNIT_LOCATIONS = dict(margin_um=10.0, minimum_z=5.0, maximum_z=20.0, minimum_distance=20.0)
DEFAULTS = dict(duration=30.0, num_channels=16, num_units=6, seed=3, sampling_frequency=30000.0)


def ground_truth_path(nwb_path) -> Path:
    nwb_path = Path(nwb_path)
    return nwb_path.with_name(nwb_path.stem + ".gt.npz")


def make_synthetic(nwb_path, gt_path=None, *, duration: float = DEFAULTS["duration"],
                   num_channels: int = DEFAULTS["num_channels"], num_units: int = DEFAULTS["num_units"],
                   seed: int = DEFAULTS["seed"], sampling_frequency: float = DEFAULTS["sampling_frequency"],
                   rel_positions: bool = True) -> dict:
    """Write the recording to nwb_path and its ground truth to gt_path (default: <stem>.gt.npz).
    rel_positions=False leaves out rel_x/rel_y (only x/y), as some real files do."""
    from datetime import datetime, timezone

    import numpy as np
    import pynwb
    from pynwb.ecephys import ElectricalSeries
    from pynwb.file import Subject
    from spikeinterface.core import generate_ground_truth_recording

    nwb_path = Path(nwb_path)
    gt_path = Path(gt_path) if gt_path is not None else ground_truth_path(nwb_path)
    recording, sorting = generate_ground_truth_recording(
        durations=[float(duration)], sampling_frequency=float(sampling_frequency), num_channels=int(num_channels),
        num_units=int(num_units), seed=int(seed), generate_unit_locations_kwargs=UNIT_LOCATIONS)
    traces = recording.get_traces(segment_index=0)  # float32, microvolts
    locations = recording.get_channel_locations()

    # int16 with a conversion factor, as acquisition systems write it; the gain keeps the peak at ~90% of range.
    peak = float(np.max(np.abs(traces))) or 1.0
    gain_uv = peak / 30000.0
    data = np.round(traces / gain_uv).astype(np.int16)

    nwbfile = pynwb.NWBFile(
        session_description=f"synthetic recording: {num_units} units, {num_channels} channels, {duration:g} s, seed {seed}",
        identifier=f"dendro-prefect-synthetic-{num_units}u-{num_channels}ch-{duration:g}s-seed{seed}",
        session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc),
        subject=Subject(subject_id="synthetic", species="Mus musculus", sex="U", age="P90D",
                        description="spikeinterface generate_ground_truth_recording"),
    )
    device = nwbfile.create_device(name="probe", description="synthetic probe")
    group = nwbfile.create_electrode_group(name="shank0", description="synthetic shank", location="unknown",
                                           device=device)
    for x, y in locations:
        rel = dict(rel_x=float(x), rel_y=float(y)) if rel_positions else {}
        nwbfile.add_electrode(x=float(x), y=float(y), z=0.0, location="unknown", group=group, **rel)
    electrodes = nwbfile.create_electrode_table_region(region=list(range(num_channels)), description="all")
    nwbfile.add_acquisition(ElectricalSeries(
        name=ELECTRICAL_SERIES_PATH.rsplit("/", 1)[1], data=data, electrodes=electrodes,
        starting_time=0.0, rate=float(sampling_frequency), conversion=gain_uv * 1e-6,
        description="synthetic extracellular traces"))
    nwb_path.parent.mkdir(parents=True, exist_ok=True)
    with pynwb.NWBHDF5IO(str(nwb_path), "w") as io:
        io.write(nwbfile)

    unit_ids = np.asarray(sorting.get_unit_ids())
    trains = [np.asarray(sorting.get_unit_spike_train(u, segment_index=0), dtype=np.int64) for u in unit_ids]
    np.savez(gt_path, sampling_frequency=float(sampling_frequency), unit_ids=unit_ids.astype(str),
             spike_frames=np.concatenate(trains), spike_labels=np.repeat(np.arange(len(unit_ids)), [len(t) for t in trains]),
             starting_time=0.0, duration=float(duration), seed=int(seed))
    return {"nwb": str(nwb_path), "ground_truth": str(gt_path), "electrical_series_path": ELECTRICAL_SERIES_PATH,
            "bytes": nwb_path.stat().st_size, "units": len(unit_ids), "spikes": int(sum(len(t) for t in trains))}


def load_ground_truth(gt_path):
    """The ground truth as a spikeinterface sorting (frames from the recording's start)."""
    import numpy as np
    from spikeinterface.core import NumpySorting

    gt = np.load(gt_path)
    unit_ids = [str(u) for u in gt["unit_ids"]]
    labels = np.asarray(unit_ids)[gt["spike_labels"]] if len(gt["spike_labels"]) else np.asarray([], dtype=str)
    order = np.argsort(gt["spike_frames"], kind="stable")
    return NumpySorting.from_samples_and_labels(
        [gt["spike_frames"][order]], [labels[order]], float(gt["sampling_frequency"]), unit_ids=unit_ids)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nwb", help="the NWB file to write")
    parser.add_argument("--ground-truth", default=None, help="the ground truth .npz (default: <stem>.gt.npz)")
    parser.add_argument("--duration", type=float, default=DEFAULTS["duration"])
    parser.add_argument("--channels", type=int, default=DEFAULTS["num_channels"])
    parser.add_argument("--units", type=int, default=DEFAULTS["num_units"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--sampling-frequency", type=float, default=DEFAULTS["sampling_frequency"])
    parser.add_argument("--xy-only", action="store_true", help="electrode positions in x/y only (no rel_x/rel_y)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    info = make_synthetic(args.nwb, args.ground_truth, duration=args.duration, num_channels=args.channels,
                          num_units=args.units, seed=args.seed, sampling_frequency=args.sampling_frequency,
                          rel_positions=not args.xy_only)
    info["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())

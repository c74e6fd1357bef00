#!/usr/bin/env python3
"""Compare the mountainsort5 app's output (an NWB units table) with the synthetic recording's ground truth.

    python compare.py SORTED.nwb GROUND_TRUTH.gt.npz [--min-accuracy 0.8] [--min-good 5] [--min-units 5] [--max-units 9]

Uses spikeinterface's `compare_sorter_to_ground_truth` (spike times matched within 0.4 ms) and prints one
JSON line: units found, each ground-truth unit's accuracy, how many reach --min-accuracy, and `pass`.
Exit status 0 when the run passes: at least --min-good ground-truth units with accuracy >= --min-accuracy
and a unit count between --min-units and --max-units (defaults: 5 of 6 at 0.8, 5-9 units); else 1;
2 when a file cannot be read. Tolerances, because sortings differ with the data (seed) and the versions.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def load_sorted_units(nwb_path, sampling_frequency: float, starting_time: float = 0.0):
    """The output's units table as a spikeinterface sorting (spike times in s -> frames)."""
    import numpy as np
    import pynwb
    from spikeinterface.core import NumpySorting

    with pynwb.NWBHDF5IO(str(nwb_path), "r") as io:
        nwbfile = io.read()
        units = nwbfile.units
        unit_ids, trains = [], []
        if units is not None:
            ids = list(units.id[:])
            for index, unit_id in enumerate(ids):
                times = np.asarray(units["spike_times"][index], dtype=float)
                trains.append(np.round((times - starting_time) * sampling_frequency).astype(np.int64))
                unit_ids.append(str(unit_id))
    samples = np.concatenate(trains) if trains else np.zeros(0, dtype=np.int64)
    labels = np.repeat(np.asarray(unit_ids), [len(t) for t in trains]) if trains else np.zeros(0, dtype=str)
    order = np.argsort(samples, kind="stable")
    return NumpySorting.from_samples_and_labels([samples[order]], [labels[order]], sampling_frequency,
                                                unit_ids=unit_ids)


def compare(sorted_nwb, gt_npz, *, min_accuracy=0.8, min_good=5, min_units=5, max_units=9) -> dict:
    import numpy as np
    from spikeinterface.comparison import compare_sorter_to_ground_truth
    from synthetic import load_ground_truth

    gt_sorting = load_ground_truth(gt_npz)
    gt = np.load(gt_npz)
    tested = load_sorted_units(sorted_nwb, float(gt["sampling_frequency"]), float(gt["starting_time"]))
    comparison = compare_sorter_to_ground_truth(gt_sorting, tested, exhaustive_gt=True)
    performance = comparison.get_performance()
    accuracies = {str(unit): round(float(performance.loc[unit, "accuracy"]), 4) for unit in performance.index}
    good = sum(1 for a in accuracies.values() if a >= min_accuracy)
    found = len(tested.get_unit_ids())
    return {
        "units_found": found,
        "gt_units": len(gt_sorting.get_unit_ids()),
        "accuracies": accuracies,
        "units_acc_ge": min_accuracy,
        "units_acc_ge_count": good,
        "well_detected": int(comparison.count_well_detected_units(min_accuracy)),
        "pass": bool(good >= min_good and min_units <= found <= max_units),
        "rule": f">= {min_good} units with accuracy >= {min_accuracy}, {min_units} <= units found <= {max_units}",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sorted_nwb")
    parser.add_argument("ground_truth")
    parser.add_argument("--min-accuracy", type=float, default=0.8)
    parser.add_argument("--min-good", type=int, default=5)
    parser.add_argument("--min-units", type=int, default=5)
    parser.add_argument("--max-units", type=int, default=9)
    args = parser.parse_args(argv)
    try:
        summary = compare(args.sorted_nwb, args.ground_truth, min_accuracy=args.min_accuracy,
                          min_good=args.min_good, min_units=args.min_units, max_units=args.max_units)
    except (OSError, KeyError, ValueError) as error:
        print(json.dumps({"pass": False, "error": f"{type(error).__name__}: {error}"}))
        return 2
    print(json.dumps(summary))
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())

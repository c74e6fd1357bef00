"""Resource quantities ("100m", "1.5", "8Gi") as numbers, so requests can be compared with the node's allocatable."""

from __future__ import annotations

import re

SUFFIXES = {"": 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
PATTERN = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


def parse_quantity(value: object) -> float:
    """The quantity's value in base units (cores, bytes, devices); ValueError when it is not a quantity."""
    match = PATTERN.match(str(value).strip())
    if not match:
        raise ValueError(f"quantities must match the regular expression '{PATTERN.pattern}'")
    return float(match.group(1)) * SUFFIXES[match.group(2) or ""]


def format_cpu(cores: float) -> str:
    return str(int(cores)) if cores == int(cores) else f"{int(round(cores * 1000))}m"

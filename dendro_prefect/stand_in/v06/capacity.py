"""Whether a compute client has room for one more job: the service's `computeResourceHasEnoughCapacityForJob`
and `fitsSlot`, on the client's compute slots.

Each of the other jobs (the client's running jobs and the jobs already offered in the same answer) takes the
first slot it fits that is not full, a slot holding `multiplicity` jobs (0 counts as 1, as `|| 1` does); the
job fits when some slot that is not full fits it. A job fits a slot when each required resource lies between
the slot's minimum and maximum.
"""

from __future__ import annotations

RESOURCES = ("numCpus", "numGpus", "memoryGb", "timeSec")


def fits_slot(job: dict, slot: dict) -> bool:
    required = job["requiredResources"]
    return all(slot[name] >= required[name] >= slot[f"min{name[0].upper()}{name[1:]}"] for name in RESOURCES)


def has_capacity_for(compute_client: dict, job: dict, other_jobs: list[dict]) -> bool:
    slots = compute_client["computeSlots"]
    taken = [0] * len(slots)

    def free(index: int) -> bool:
        return taken[index] < (slots[index]["multiplicity"] or 1)

    for other in other_jobs:
        index = next((i for i, slot in enumerate(slots) if free(i) and fits_slot(other, slot)), None)
        if index is not None:
            taken[index] += 1
    return any(free(i) and fits_slot(job, slot) for i, slot in enumerate(slots))

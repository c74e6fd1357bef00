"""Write deployments/<pool>.json: the base job templates of the four work pools, as the worker classes generate them.

Prefect makes a pool's template from its worker class when the pool is created without one; these files make that
template something an admin can review, version, edit and apply (`prefect work-pool create <pool> --type <type>
--base-job-template deployments/<pool>.json`). Run this after changing a worker's job variables: the unit test
tests/unit/test_base_job_templates.py fails until the files match the classes again.

    python scripts/write-base-job-templates.py           # (re)write the files
    python scripts/write-base-job-templates.py --check   # write nothing; exit 1 naming the stale files
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEPLOYMENTS = REPO / "deployments"
# Pool name (as in prefect.yaml) → worker type.
POOLS = {"local": "dendro-local", "slurm": "dendro-slurm", "aws-batch": "dendro-aws-batch",
         "kubernetes": "dendro-kubernetes"}


def template_text(worker_type: str) -> str:
    """The worker type's default base job template as its file holds it."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # this checkout's dendro_prefect, not another one installed
    from dendro_prefect import workers

    worker = next(cls for cls in (getattr(workers, name) for name in workers.__all__) if cls.type == worker_type)
    return json.dumps(worker.get_default_base_job_template(), indent=2, sort_keys=True) + "\n"


def stale_files() -> list[Path]:
    """The files that differ from what the worker classes generate (or are missing)."""
    paths = [DEPLOYMENTS / f"{pool}.json" for pool in POOLS]
    return [path for path, worker_type in zip(paths, POOLS.values())
            if not path.exists() or path.read_text() != template_text(worker_type)]


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print(__doc__, file=sys.stderr)
        return 2
    if argv == ["--check"]:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path.relative_to(REPO)} (run python scripts/write-base-job-templates.py)")
        return 1 if stale else 0
    for pool, worker_type in POOLS.items():
        (DEPLOYMENTS / f"{pool}.json").write_text(template_text(worker_type))
        print(f"wrote deployments/{pool}.json ({worker_type})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What a test can choose about the stand-in cluster (its single node's size, images that cannot be pulled)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Options:
    workdir: Path
    token: str
    cpu: float = 4
    memory: str = "8Gi"
    gpus: int = 0
    missing_images: set[str] = field(default_factory=set)
    kill_grace_cap: float = 1.0  # SIGTERM→SIGKILL wait, capped so that deletes finish within a test's patience

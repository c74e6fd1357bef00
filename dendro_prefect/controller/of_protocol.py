"""The controller of a configuration's protocol."""

from __future__ import annotations

import logging

from ..config import ComputeClientConfig, ComputeResourceConfig
from . import reconcile
from .rounds import ComputeResourceController, Controller
from .v06 import ComputeClientController


def controller_for(config: ComputeResourceConfig | ComputeClientConfig, deployments: dict[str, str],
                   logger: logging.Logger | logging.LoggerAdapter, settle_sec: float = reconcile.SETTLE_SEC) -> Controller:
    if isinstance(config, ComputeClientConfig):
        return ComputeClientController(config, deployments, logger, settle_sec)
    return ComputeResourceController(config, deployments, logger, settle_sec)

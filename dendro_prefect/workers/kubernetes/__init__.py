"""The `dendro-kubernetes` worker: each Dendro job a Kubernetes Job (batch/v1) with its key in a Secret
the Job owns. The work pool's base job template holds the Job manifest, with placeholders for the
pool's variables (namespace, service account, node selector, tolerations, pull secrets, volumes, labels)."""

from __future__ import annotations

from pydantic import Field

from ..base import DendroJobConfiguration, DendroVariables, DendroWorker
from ..launch import Launcher
from .launcher import KubernetesLauncher
from .settings import KubernetesJobSettings, KubernetesLauncherSettings


class KubernetesJobConfiguration(DendroJobConfiguration, KubernetesLauncherSettings):
    pass


class KubernetesVariables(DendroVariables, KubernetesJobSettings):
    """The settings, and the placeholders of the Job manifest (`job_manifest`, in the configuration only)."""

    namespace: str = Field(default="default", description="Namespace of the Jobs and their Secrets.")
    service_account_name: str = Field(default="", description="Service account of the pods; empty: the "
                                      "namespace's default.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="nodeSelector of the pods.")
    tolerations: list[dict] = Field(default_factory=list, description="tolerations of the pods, e.g. for GPU nodes.")
    image_pull_secrets: list[dict] = Field(default_factory=list, description="imagePullSecrets, e.g. "
                                           "[{\"name\": \"regcred\"}].")
    extra_volumes: list[dict] = Field(default_factory=list, description="More volumes of the pods.")
    extra_volume_mounts: list[dict] = Field(default_factory=list, description="Their mounts in the app container.")
    labels: dict[str, str] = Field(default_factory=dict, description="More labels of the Jobs and pods.")
    ttl_seconds_after_finished: int = Field(default=3600, description="Kubernetes removes a finished Job after "
                                            "this long, should its worker be gone (the worker removes it at once).")


class KubernetesWorker(DendroWorker):
    type = "dendro-kubernetes"
    job_configuration = KubernetesJobConfiguration
    job_configuration_variables = KubernetesVariables
    settings_model = KubernetesLauncherSettings
    _description = "Runs Dendro jobs as Kubernetes Jobs, their keys in Secrets, watched through the watch API."
    _display_name = "Dendro Kubernetes"
    overrun_grace_sec = 120.0  # Kubernetes enforces activeDeadlineSeconds itself: give it time to

    def new_launcher(self, settings: KubernetesLauncherSettings) -> Launcher:
        return KubernetesLauncher(settings)

"""The `dendro-kubernetes` worker: each Dendro job a Kubernetes Job (batch/v1) with its key in a Secret
the Job owns. The work pool's base job template holds the Job manifest, with placeholders for the
pool's variables (namespace, service account, node selector, tolerations, pull secrets, volumes, labels)."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from ..base import DendroJobConfiguration, DendroVariables, DendroWorker
from ..launch import Launcher
from .cluster import ClusterAccess
from .launcher import KubernetesLauncher, KubernetesSettings
from .manifest import default_job_manifest


class KubernetesJobSettings(BaseModel):
    """The Kubernetes pool's own job settings, declared once for its form and its jobs."""

    cluster_config_block: str = Field(default="", description="Name of a prefect-kubernetes KubernetesClusterConfig "
                                      "block; empty: kubeconfig_path, else the in-cluster service account, else "
                                      "~/.kube/config.")
    kubeconfig_path: str = Field(default="", description="A kubeconfig file.")
    context: str = Field(default="", description="Its context; empty: the current one.")
    deadline_margin_sec: float = Field(default=60.0, description="Added to timeSec for activeDeadlineSeconds: the "
                                       "dendro SDK stops the app at timeSec, Kubernetes is the backstop.")
    pending_warning_sec: float = Field(default=60.0, description="A pod Pending this long gets its events "
                                       "(FailedScheduling, image pulls, quota) written to the flow-run log; "
                                       "an image or configuration error then fails the job.")
    pending_limit_sec: float = Field(default=600.0, description="A pod Pending this long fails the job with "
                                     "the reason its events give.")
    max_evictions: int = Field(default=2, description="How often a job whose pod was evicted is started again.")


class KubernetesJobConfiguration(DendroJobConfiguration, KubernetesJobSettings):
    job_manifest: dict = Field(default_factory=default_job_manifest,
                               json_schema_extra=dict(template=default_job_manifest()))


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
    _description = "Runs Dendro jobs as Kubernetes Jobs, their keys in Secrets, watched through the watch API."
    _display_name = "Dendro Kubernetes"
    _documentation_url = "https://github.com/flatironinstitute/dendro"
    overrun_grace_sec = 120.0  # Kubernetes enforces activeDeadlineSeconds itself: give it time to

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._launchers: dict[str, Launcher] = {}

    def job_time_limit(self, configuration: KubernetesJobConfiguration) -> float | None:
        limit = configuration.time_limit_sec
        return None if limit is None else limit + configuration.deadline_margin_sec

    def launcher(self, configuration: KubernetesJobConfiguration) -> Launcher:
        settings = KubernetesSettings(
            access=ClusterAccess(configuration.cluster_config_block, configuration.kubeconfig_path,
                                 configuration.context),
            job_manifest=configuration.job_manifest, deadline_margin_sec=configuration.deadline_margin_sec,
            pending_warning_sec=configuration.pending_warning_sec, pending_limit_sec=configuration.pending_limit_sec,
            max_evictions=configuration.max_evictions,
        )
        key = json.dumps([settings.access.__dict__, settings.job_manifest, settings.deadline_margin_sec,
                          settings.pending_warning_sec, settings.pending_limit_sec, settings.max_evictions],
                         sort_keys=True, default=str)
        if key not in self._launchers:
            self._launchers[key] = KubernetesLauncher(settings)
        return self._launchers[key]

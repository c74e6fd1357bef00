"""The Kubernetes pool's own job settings, declared once: its form in the Prefect UI, its jobs' configuration
and its launchers are all made of these models."""

from __future__ import annotations

from pydantic import Field

from ..launch import InfrastructureRetrySetting
from .manifest import default_job_manifest


class KubernetesJobSettings(InfrastructureRetrySetting):
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

    def infrastructure_time_limit(self, time_limit_sec: float | None) -> float | None:
        """A Job's activeDeadlineSeconds: its timeSec and the margin (the worker waits as long before it kills)."""
        return None if time_limit_sec is None else time_limit_sec + self.deadline_margin_sec


class KubernetesLauncherSettings(KubernetesJobSettings):
    """What a launcher is made of: the settings and the pool's Job manifest (in the job configuration only,
    its placeholders filled from the variables)."""

    job_manifest: dict = Field(default_factory=default_job_manifest,
                               json_schema_extra=dict(template=default_job_manifest()))

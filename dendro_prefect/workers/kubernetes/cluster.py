"""Access to a Kubernetes cluster with the official client: from a prefect-kubernetes
`KubernetesClusterConfig` block, a kubeconfig file, or the in-cluster service account, in that order of
preference. The cluster's identity (the uid of its kube-system namespace) goes into infrastructure ids,
so that a worker pointed at another cluster never mistakes a job there for its own."""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from ..launch import LaunchError


@dataclass(frozen=True)
class ClusterAccess:
    cluster_config_block: str = ""
    kubeconfig_path: str = ""
    context: str = ""

    def api_client(self) -> client.ApiClient:
        """A client of its own (never the module's global default). Blocking."""
        try:
            if self.cluster_config_block:
                from prefect_kubernetes import KubernetesClusterConfig

                try:
                    block = KubernetesClusterConfig.load(self.cluster_config_block, _sync=True)
                except ValueError as error:
                    raise LaunchError(f"Kubernetes cluster config block {self.cluster_config_block!r} cannot be "
                                      f"loaded: {error}") from None
                return config.new_client_from_config_dict(block.config, context=block.context_name)
            if self.kubeconfig_path:
                return config.new_client_from_config(self.kubeconfig_path, context=self.context or None)
            try:
                configuration = client.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                return client.ApiClient(configuration)
            except ConfigException:
                return config.new_client_from_config(context=self.context or None)
        except (ConfigException, OSError) as error:
            raise LaunchError(f"no Kubernetes cluster configuration: {' '.join(str(error).split())[:200]}") from None


def cluster_identity(api: client.ApiClient) -> str:
    """The uid of kube-system, shortened: stable for the cluster's life. Blocking."""
    return client.CoreV1Api(api).read_namespace("kube-system").metadata.uid.split("-")[0]

"""A STAND-IN for the Kubernetes API server, for tests only (no kube-apiserver can run on the test machines).

`running_api_server(workdir)` starts a real HTTP server on 127.0.0.1 that the official `kubernetes` Python client
talks to through the kubeconfig it writes (one cluster, context and user; a bearer token the server checks). It
serves the subset a Job-running worker needs: discovery (/version, /api, /apis), Namespaces, Secrets, batch/v1
Jobs, Pods, pod logs, Events and one Node, with list/get/create/delete, label and field selectors, watch streams
(410 Expired after `compact()`), resourceVersions, uids, ownerReferences and Kubernetes Status errors. Behind it a
scheduler, kubelet, Job controller, garbage collector and TTL controller act as Kubernetes' do, in miniature.

What differs from Kubernetes:
- Images are ignored: the FIRST container's `command` + `args` runs as a local process (its own session, so the
  whole process group is signalled), with only PATH, HOSTNAME, HOME (a private dir), a marker variable
  K8S_STAND_IN_POD_UID and the container's env. Other containers are not run (their statuses copy the first's).
  A container without `command` fails to start (StartError): image entrypoints cannot run here.
- Nothing is mounted: emptyDir and secret volumes are private directories per pod under the workdir, hostPath is
  the host path, and each volumeMount's mountPath prefix is rewritten to that directory in command, args, env
  values and workingDir (paths a program builds itself are not rewritten). Other volume types fail to mount.
- No isolation: the process shares the host's filesystem, network (pod IP 127.0.0.1) and user. CPU limits are
  not enforced; the memory limit is enforced by sampling the process group's RSS five times a second (SIGKILL →
  OOMKilled, 137), so short spikes can pass and page cache does not count.
- Images named in `missing_images` fail to pull (ErrImagePull, then ImagePullBackOff); all others are "present".
- restartPolicy OnFailure behaves like Never (the Job controller replaces the pod); replacement pods come after
  1 s, not after Kubernetes' 10 s doubling back-off. Grace periods are capped at 1 s (SIGTERM, then SIGKILL).
- No PATCH/PUT, no pagination (limit/continue ignored), no bookmarks, no podFailurePolicy, successPolicy, Indexed
  Jobs, ConfigMaps, Services, RBAC or admission beyond simple validation; quantities are not canonicalised.
- FailedScheduling messages lack the scheduler's "preemption: ..." suffix; events and conditions use second
  precision; containerID is `stand-in://<pgid>`; the node is `stand-in-node` at 127.0.0.1.
- Admin endpoints under /stand-in/ (evict, compact, raw listings, live processes) exist only here.

Kept as in Kubernetes on purpose, because a worker must cope with them: deleting a batch/v1 Job without a
propagationPolicy ORPHANS its pods (with a Warning header); completionTime is set only when a Job succeeds;
FailureTarget / SuccessCriteriaMet conditions precede Failed / Complete; a Job's restartPolicy must be Never or
OnFailure; names and label values are validated (422); logs of a pod not yet running answer 400.
"""

from .harness import ApiServer, running_api_server

__all__ = ["ApiServer", "running_api_server"]

#!/bin/sh
# The `dendro-controller` service of compose.yaml (in dendro-prefect:local as /usr/local/bin/dendro-controller), at
# each start of its container, against the Prefect server of PREFECT_API_URL (its pools and deployments made by the
# `dendro-setup` service), with the compute resource's configuration in the dendro-prefect home:
#   1. the subscription flow run, `dendro-prefect start-subscription`, which first cancels the run the container's
#      previous start left unfinished (its process ended with the container), as systemd's
#      dendro-prefect-subscription.service does at each restart of the controller's worker (first: the worker's
#      first query then finds the run, where a run created after it would wait for its next, 10 s later);
#   2. the process worker of pool dendro-controller, which runs it (exec: it receives the container's stop signal).
# If a step fails, the container ends, and its restart policy starts it again.
# Environment: DENDRO_CONTROLLER_WORKER_NAME (default dendro-controller@compose), and the worker's options from
# Prefect's settings (PREFECT_WORKER_WEBSERVER_PORT ...).
set -eu

dendro-prefect start-subscription
exec prefect worker start --pool dendro-controller --type process \
    --name "${DENDRO_CONTROLLER_WORKER_NAME:-dendro-controller@compose}" --with-healthcheck

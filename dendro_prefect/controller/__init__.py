"""From Dendro jobs to Prefect flow runs: routing and intake, used by the subscription flow.

It knows deployments, never backends: a new backend touches `workers/` and `prefect.yaml` only.
"""

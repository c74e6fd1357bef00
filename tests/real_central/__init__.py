"""The real Dendro 0.2.17 central (the PyPI package's own FastAPI routers) served on loopback for the tests:
`serve.py` runs in a venv of its own (.venv-central); `harness.py` starts it and speaks its GUI routes."""

"""dendro-prefect: a Dendro compute resource built on Prefect."""

__version__ = "0.1.0"

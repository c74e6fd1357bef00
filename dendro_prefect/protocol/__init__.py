"""The Dendro protocols: 0.2.x compute resources (models, signing, the central client) and, in `v06`, the 0.6
compute clients of a service; their shared HTTP transport.

This package imports nothing else of ours: everything else stands on it.
"""

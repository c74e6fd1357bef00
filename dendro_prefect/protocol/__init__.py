"""The Dendro 0.2.x compute-resource protocol: models, signing and the central client.

This package imports nothing else of ours: everything else stands on it.
"""

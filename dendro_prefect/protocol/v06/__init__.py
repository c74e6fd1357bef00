"""The Dendro 0.6 compute-client protocol (magland/dendro, `dendro` 0.6.x): models, client, registration."""

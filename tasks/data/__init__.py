"""The formats between stages: segment manifests, token datasets, training windows, checkpoints."""

"""Datasets: a registry of specs, where images come from, splits, object storage, the tensor cache, batches."""

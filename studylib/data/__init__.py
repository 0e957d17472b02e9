"""Datasets: a registry of specs, where images come from, splits, object storage, the tensor cache, batches.

Importing any module of this package registers every dataset: the loaders in `sources` carry their
`@register_dataset` specs, and importing them here fills the registry (as timm's models/__init__.py does).
"""
from studylib.data import sources  # noqa: F401  (registers the datasets)
from studylib.data import cifar10  # noqa: F401  (registers cifar10: torchvision's arrays or the JPEG export)

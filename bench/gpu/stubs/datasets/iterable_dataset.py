from . import IterableDataset  # noqa: F401

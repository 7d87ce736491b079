"""Stand-in for Hugging Face ``datasets`` on the offline GPU image (TransformerLens imports it at
import time for type hints and dataset helpers that the benchmark never calls). Used only when
the real package is missing (see run_gpu.sh)."""


def load_dataset(*args, **kwargs):
    raise ImportError("datasets is not installed on this machine (stub)")


class Dataset:  # noqa: D101
    pass


class IterableDataset:  # noqa: D101
    pass

from . import load_dataset  # noqa: F401

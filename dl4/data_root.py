"""Where datasets live: ``DL4_DATA_DIR`` (default ``./data``), overridable per datamodule."""

import os


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not where it was looked for; the message says where and how to get it."""


def default_data_dir() -> str:
    return os.environ.get("DL4_DATA_DIR", "./data")

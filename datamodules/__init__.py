from datamodules.data_root import DatasetNotFoundError, default_data_dir
from datamodules.mnist import MNISTDataModule

__all__ = ["DatasetNotFoundError", "MNISTDataModule", "default_data_dir"]

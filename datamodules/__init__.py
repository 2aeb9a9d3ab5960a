from datamodules.algorithmic import AlgorithmicTasksDataModule
from datamodules.babi import BabiDataModule
from datamodules.coco_captions import CocoCaptionsDataModule
from dl4.data_root import DatasetNotFoundError, default_data_dir
from datamodules.distorted_mnist import DistortedMNISTDataModule
from datamodules.mnist import MNISTDataModule
from datamodules.mnist_captions import MNISTCaptionsDataModule
from datamodules.toy import Toy1DDataModule

__all__ = ["AlgorithmicTasksDataModule", "BabiDataModule", "CocoCaptionsDataModule", "DatasetNotFoundError",
           "DistortedMNISTDataModule", "MNISTCaptionsDataModule", "MNISTDataModule", "Toy1DDataModule",
           "default_data_dir"]

"""dl4: the classic models of modern deep learning as Lightning experiments."""

__version__ = "0.1.0"

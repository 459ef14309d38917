"""torchwire: train, evaluate and serve PyTorch models over gRPC."""

__version__ = "0.1.0"

"""huberfit: linear-regression training experiments in PyTorch.

This file holds the version only and must never import torch (``huberfit --help`` stays fast).
"""

__version__ = "0.1.0"

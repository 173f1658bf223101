"""deepnotes: twelve deep-learning notes as one PyTorch library.

Each technique is implemented from its equations, tested against a reference
implementation or a closed form, benchmarked against what a user would pick
instead, and reproduced by an experiment (``deepnotes run``).
"""
__version__ = "0.1.0"
__all__ = ["__version__"]

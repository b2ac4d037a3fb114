"""The maths of meta-learning: models, task distributions and algorithms.

Pure PyTorch; this package imports neither Ray nor MLflow so that every piece
can be tested, and reused, in a single process.
"""

from meta_core import algorithms, resnet12  # noqa: E402, F401  (registers the built-in algorithms' and models' specs)

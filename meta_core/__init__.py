"""The maths of meta-learning: models, task distributions and algorithms.

Pure PyTorch; this package imports neither Ray nor MLflow so that every piece
can be tested, and reused, in a single process.
"""

from meta_core.registry import import_modules

import_modules(__name__)  # every module here and in meta_core.algorithms: the built-in models and algorithms register their specs

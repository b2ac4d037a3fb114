"""The algorithms: every module here is imported, and each registers its spec (``meta_core.registry.ALGORITHMS``).

Adding an algorithm is one new file in this folder: a learner class (``base.Algorithm``'s protocol; usually a
subclass of ``gradient.GradientLearner`` or ``episodic.EpisodeLearner``) and its ``AlgorithmSpec``. From the
spec alone, and nothing else to edit:

- the config accepts it (``algorithm.name``, its ``options`` checked by ``pipelines.config``, its ``kinds`` and
  ``models`` against the data set and model; ``algorithm.checkpoint_inner`` where ``checkpointable``);
- ``Learner.build`` gives it the network its ``head`` asks for (with a head per way, ``ways + 1``, or none);
- distribution, evaluation and serving call only the protocol (``task_gradient``, ``adapt``/``adaptations``,
  ``predict``), so workers, the evaluate stage and the served model need nothing new;
- ``python -m pipelines specs`` lists it with its options.

What is left by hand, where wanted: a shipped config (``pipelines/configs/<name>.yaml``, to ``run <name>``), a
published protocol beside it (``pipelines/configs/benchmarks/``), and a line in the documentation's table of
algorithms.
"""

from meta_core.algorithms.base import Algorithm
from meta_core.registry import import_modules

import_modules(__name__)

__all__ = ["Algorithm"]

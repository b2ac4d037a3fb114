"""ANML (Beaulieu et al. 2020): a neuromodulatory network gates the prediction network, which learns the stream.

The inner loop learns the trajectory with the whole prediction network (everything but ``nm.``); the
neuromodulatory network learns only in the outer loop, through its gating of every inner step. The authors' code
is first order by accident (its gradients are taken without ``create_graph``): ``first_order: true`` is that.
"""

from meta_core.algorithms.continual import LIFELONG, StreamLearner, learner_of, stream_options
from meta_core.models import Params
from meta_core.registry import AlgorithmSpec, register_algorithm

NEUROMODULATION = "body.nm."  # the network is the body of a Classifier (continual.py)


class ANML(StreamLearner):
    def fast_weights(self, weights: Params) -> Params:
        return {k: v for k, v in weights.items() if not k.startswith(NEUROMODULATION)}


register_algorithm(
    AlgorithmSpec(
        "anml",
        learner_of(ANML),
        "one-pass SGD on a neuromodulated network over a stream of classes, the gating meta-learned through it (lifelong)",
        options=stream_options(remember=64, replay=True),
        models=("anml_net",),
        **LIFELONG,
    )
)

"""OML (Javed & White 2019, as fixed in July 2020): meta-learn a representation for one-pass SGD on a linear head.

The inner loop learns the trajectory with the prediction layer (the network's ``head``) alone; the outer loss
is the query loss of the adapted network, differentiated into both the representation and the head's start.
"""

from meta_core.algorithms.continual import StreamLearner, learner_of, stream_options
from meta_core.models import HEAD, Params
from meta_core.registry import AlgorithmSpec, no_head, register_algorithm


class OML(StreamLearner):
    def fast_weights(self, weights: Params) -> Params:
        return {k: v for k, v in weights.items() if k.startswith(HEAD)}


register_algorithm(
    AlgorithmSpec(
        "oml",
        learner_of(OML),
        "one-pass SGD on the head over a stream of classes, the representation meta-learned through it (lifelong)",
        options=stream_options(remember=15, replay=False),
        kinds=("classification",),
        head=no_head,
        lifelong=True,
    )
)

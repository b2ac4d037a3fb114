"""The lifelong learners' baseline: a network pre-trained by ordinary classification of the meta-training classes.

It trains on the trajectories the lifelong learners meet, i.i.d.: the gradient of the cross-entropy of all of a
trajectory's examples (stream and query) at the parameters themselves, no inner loop. It is then tested as OML is,
one pass of SGD on its head; with no training at all (``train.steps: 0``) the same is the from-scratch baseline.
"""

import torch

from meta_core.algorithms.base import Metrics, task_loss
from meta_core.algorithms.continual import LIFELONG, learner_of, stream_options
from meta_core.algorithms.oml import OML
from meta_core.autodiff import grad
from meta_core.models import Params
from meta_core.registry import AlgorithmSpec, register_algorithm
from meta_core.tasks import Task


class Pretrained(OML):
    def examples_loss(self, params: Params, task: Task):
        x, y = torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
        out = self.predict(self.weights(params), x)
        loss, examples = task_loss(self.kind, out, y), Task(x, y, x, y)
        metrics = {p: self.query_metrics(None, examples, p, out.detach()) for p in ("pre_adapt", "post_adapt")}  # no adaptation: one figure
        return loss, {"meta_loss": loss.detach(), **metrics["pre_adapt"], **metrics["post_adapt"]}

    def task_gradient(self, params: Params, task: Task, pre_adapt: bool = True) -> tuple[Params, Metrics]:
        return grad(self.examples_loss, has_aux=True)(params, task)


register_algorithm(
    AlgorithmSpec(
        "pretrained",
        learner_of(Pretrained),
        "baseline: i.i.d. classification of the trajectories' examples, tested as OML is (lifelong)",
        options=stream_options(remember=15, replay=False),
        **LIFELONG,
    )
)

"""MetaGAN (Zhang, Che, Ghahramani, Bengio and Song, NeurIPS 2018) on MAML.

The learner is a discriminator with ``ways + 1`` outputs: the task's classes and
"fake". A generator conditioned on the task (the mean encoding of its support set)
makes ``generated`` fake examples per class. MAML's inner loop adapts the learner on
the real support set plus fakes; the outer loss is the adapted learner's ``ways + 1``
cross-entropy on the real queries and on fresh fakes. The generator is trained
against the adapted learner (non-saturating: its fakes should be taken for real),
so it keeps producing examples near the classes' boundaries, which sharpen them.
At prediction the fake logit is dropped: the answer is over the real classes.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from meta_core.algorithms.generative import GENERATOR, Generative, generator_options, mlp
from meta_core.algorithms.maml import MAML
from meta_core.autodiff import grads
from meta_core.models import Params, forward
from meta_core.registry import AlgorithmSpec, positive_int, register_algorithm
from meta_core.tasks import Task


class TaskGenerator(nn.Module):
    """Fake examples shaped like ``shape`` from noise and the task's code: the mean encoding of its support set."""

    def __init__(self, shape: tuple[int, ...], noise: int, width: int):
        super().__init__()
        self.shape, size = tuple(shape), math.prod(shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(size, width), nn.LeakyReLU(0.2))
        self.decoder = mlp(width + noise, width, size)

    def forward(self, support_x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        code = self.encoder(support_x).mean(0).expand(len(noise), -1)
        return self.decoder(torch.cat([code, noise], -1)).unflatten(-1, self.shape)


class MetaGAN(Generative, MAML):
    """``metrics``: the usual ones over the real classes, plus ``generator_loss``."""

    def __init__(self, model: nn.Module, kind: str, generated: int = 1, noise: int = 100, generator_width: int = 256, **kwargs):
        super().__init__(model, kind, **kwargs)
        if self.input_shape is None:
            raise ValueError("metagan: the generator needs input_shape, the shape of one example")
        self.ways, self.generated, self.noise = model.head.out_features, generated, noise
        model.head = nn.Linear(model.head.in_features, self.ways + 1)  # the last logit is "fake"
        model.generator = TaskGenerator(self.input_shape, noise, generator_width)

    def draw(self, like: torch.Tensor) -> torch.Tensor:
        """Noise for one batch of fakes, ``generated`` per class."""
        return torch.randn(self.ways * self.generated, self.noise, device=like.device)

    def with_fakes(self, params: Params, x, y, noise) -> tuple[torch.Tensor, torch.Tensor]:
        """The support set ``(x, y)`` plus fakes made from ``noise`` for it, labelled "fake" (class ``ways``)."""
        fakes = self.generate(params, x, noise)
        return torch.cat([x, fakes]), torch.cat([y, y.new_full((len(fakes),), self.ways)])

    def adapt(self, params: Params, x, y, steps: int | None = None) -> Params:
        """MAML's inner loop on the real support set plus freshly generated fakes."""
        return super().adapt(params, *self.with_fakes(params, x, y, self.draw(x)), steps)

    def losses(self, params: Params, task: Task, noise, pre_adapt: bool):
        """The learner's and the generator's losses from one adaptation (on the real support set plus fakes from
        ``noise[0]``), with the metrics; fresh fakes come from ``noise[1]``.

        The learner's: ``ways + 1`` cross-entropy of the adapted learner on the real queries and the fakes. The
        generator's, non-saturating: ``-log P(not fake)`` of the fakes under the adapted learner.
        """
        adapted = super().adapt(params, *self.with_fakes(params, task.support_x, task.support_y, noise[0]))
        fake = forward(self.model, adapted, self.generate(params, task.support_x, noise[1]))
        real = forward(self.model, adapted, task.query_x)  # real and fake queries apart: batch norm sees the real ones alone, as at prediction
        learner = (F.cross_entropy(real, task.query_y, reduction="sum") + F.cross_entropy(fake, self.fake_labels(fake), reduction="sum")) / (
            len(real) + len(fake)
        )
        generator = (fake.logsumexp(-1) - fake[:, : self.ways].logsumexp(-1)).mean()
        return (learner, generator), {**self.task_metrics(params, adapted, task, pre_adapt, real), "generator_loss": generator.detach()}

    def fake_labels(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.full((len(logits),), self.ways, dtype=torch.long, device=logits.device)

    def task_grad(self, params: Params, task: Task, pre_adapt: bool = True) -> tuple[Params, dict[str, torch.Tensor]]:
        """The learner's weights follow the learner's loss, the generator's follow the generator's loss; both see the
        same fakes."""
        noise = torch.stack([self.draw(task.support_x), self.draw(task.support_x)])
        (learner, generator), metrics = grads(self.losses, has_aux=True)(params, task, noise, pre_adapt)
        return {k: generator[k] if k.startswith(GENERATOR) else g for k, g in learner.items()}, metrics

    def query_metrics(self, weights: Params, task: Task, prefix: str, out=None) -> dict[str, torch.Tensor]:
        """Over the real classes only, as predictions are."""
        if out is None:
            with torch.no_grad():
                out = forward(self.model, weights, task.query_x)
        return super().query_metrics(weights, task, prefix, out[..., : self.ways])

    def evaluate(self, params: Params, task: Task, steps: list[int]) -> dict[str, torch.Tensor]:
        """Adaptation steps on the real support set plus one batch of fakes, as at prediction."""
        x, y = self.with_fakes(params, task.support_x, task.support_y, self.draw(task.support_x))
        return super().evaluate(params, task._replace(support_x=x, support_y=y), steps)

    def predict(self, params: Params, support_x, support_y, query_x, steps: int | None = None) -> torch.Tensor:
        return super().predict(params, support_x, support_y, query_x, steps)[..., : self.ways]


register_algorithm(
    AlgorithmSpec(
        "metagan",
        MetaGAN,
        "as `maml` with a `ways + 1`-way learner adapted on real plus generated support examples; a task-conditioned generator trained against it",
        options=(positive_int("generated", 1, "fake examples per class, in the support set and among the queries"), *generator_options(100, 256)),
        kinds=("classification",),
        checkpointable=True,
    )
)

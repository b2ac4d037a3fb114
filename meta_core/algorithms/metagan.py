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
    """Given a network with ``outputs + 1`` outputs (its spec's ``head``), the last one "fake".
    ``metrics``: the usual ones over the real classes, plus ``generator_loss``."""

    def __init__(self, model: nn.Module, kind: str, generated: int = 1, noise: int = 100, generator_width: int = 256, **kwargs):
        super().__init__(model, kind, **kwargs)
        if self.input_shape is None or self.outputs is None:
            raise ValueError("metagan: the generator needs input_shape, the shape of one example, and outputs, the number of ways")
        self.ways, self.generated, self.noise = self.outputs, generated, noise
        model.generator = TaskGenerator(self.input_shape, noise, generator_width)

    def fast_weights(self, weights: Params) -> Params:
        """The generator is meta-trained only: the inner loop never adapts it."""
        return {k: w for k, w in weights.items() if not k.startswith(GENERATOR)}

    def draw(self, like: torch.Tensor) -> torch.Tensor:
        """Noise for one batch of fakes, ``generated`` per class."""
        return torch.randn(self.ways * self.generated, self.noise, device=like.device)

    def with_fakes(self, params: Params, x, y, noise) -> tuple[torch.Tensor, torch.Tensor]:
        """The support set ``(x, y)`` plus fakes made from ``noise`` for it, labelled "fake" (class ``ways``)."""
        fakes = self.generate(params, x, noise)
        return torch.cat([x, fakes]), torch.cat([y, y.new_full((len(fakes),), self.ways)])

    def adaptations(self, params: Params, task: Task, counts: list[int]) -> list[Params]:
        """MAML's inner loop on the real support set plus one batch of freshly generated fakes."""
        x, y = self.with_fakes(params, task.support_x, task.support_y, self.draw(task.support_x))
        return super().adaptations(params, task._replace(support_x=x, support_y=y), counts)

    def predict(self, adapted: Params, query_x: torch.Tensor) -> torch.Tensor:
        """Logits over the real classes: the "fake" one dropped."""
        return forward(self.model, adapted, query_x)[..., : self.ways]

    def losses(self, params: Params, task: Task, pre_adapt: bool):
        """The learner's and the generator's losses from one adaptation (on the real support set plus fakes), with
        the metrics; fresh fakes are drawn after it.

        The learner's: ``ways + 1`` cross-entropy of the adapted learner on the real queries and the fakes. The
        generator's, non-saturating: ``-log P(not fake)`` of the fakes under the adapted learner.
        """
        adapted = self.adapt(params, task)
        fake = forward(self.model, adapted, self.generate(params, task.support_x, self.draw(task.support_x)))
        real = forward(self.model, adapted, task.query_x)  # real and fake queries apart: batch norm sees the real ones alone, as at prediction
        learner = (F.cross_entropy(real, task.query_y, reduction="sum") + F.cross_entropy(fake, self.fake_labels(fake), reduction="sum")) / (
            len(real) + len(fake)
        )
        generator = (fake.logsumexp(-1) - fake[:, : self.ways].logsumexp(-1)).mean()
        metrics = self.task_metrics(params, adapted, task, pre_adapt, real[..., : self.ways])
        return (learner, generator), {**metrics, "generator_loss": generator.detach()}

    def fake_labels(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.full((len(logits),), self.ways, dtype=torch.long, device=logits.device)

    def task_gradient(self, params: Params, task: Task, pre_adapt: bool = True) -> tuple[Params, dict[str, torch.Tensor]]:
        """The learner's weights follow the learner's loss, the generator's follow the generator's loss; both see the
        same fakes."""
        (learner, generator), metrics = grads(self.losses, has_aux=True)(params, task, pre_adapt)
        return {k: generator[k] if k.startswith(GENERATOR) else g for k, g in learner.items()}, metrics


register_algorithm(
    AlgorithmSpec(
        "metagan",
        MetaGAN,
        "as `maml` with a `ways + 1`-way learner adapted on real plus generated support examples; a task-conditioned generator trained against it",
        options=(positive_int("generated", 1, "fake examples per class, in the support set and among the queries"), *generator_options(100, 256)),
        kinds=("classification",),
        checkpointable=True,
        head=lambda ways: ways + 1,
    )
)

"""Hallucination (Wang, Girshick, Hebert and Hariharan, "Low-Shot Learning from Imaginary Data", CVPR 2018).

A generator ``G(seed embedding, noise)`` makes new embeddings of the seed's class;
the learner classifies queries against the real support set plus ``generated``
hallucinated examples per class. ``G`` has no loss of its own: it is trained end to
end through the meta-learner's query loss, so it learns to generate whatever helps
classification, realistic or not.
"""

import torch

from meta_core.algorithms.episodic import EPISODIC
from meta_core.algorithms.generative import Generative, generator_options, mlp
from meta_core.algorithms.matching import MatchingNet
from meta_core.algorithms.protonet import ProtoNet
from meta_core.models import Params
from meta_core.registry import AlgorithmSpec, non_negative_int, register_algorithm


class Hallucination(Generative):
    """Mixin over an episode learner (``ProtoNet``, ``MatchingNet``): ``generated`` extra support embeddings per
    class, each from a support example of that class drawn at random (its seed) and ``noise`` standard normals."""

    def __init__(self, model, kind: str, generated: int = 5, noise: int = 64, generator_width: int = 512, **kwargs):
        super().__init__(model, kind, **kwargs)
        self.generated, self.noise = generated, noise
        self.model.generator = mlp(self.features + noise, generator_width, self.features)

    def support_set(self, params: Params, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.generated == 0:
            return embeddings, labels
        seeds = self.seeds(labels)
        noise = torch.randn(len(seeds), self.noise, device=embeddings.device)
        hallucinated = self.generate(params, torch.cat([embeddings[seeds], noise], -1))
        return torch.cat([embeddings, hallucinated]), torch.cat([labels, labels[seeds]])

    def seeds(self, labels: torch.Tensor) -> torch.Tensor:
        """``(ways * generated,)`` support indices: for each class, ``generated`` of its examples drawn uniformly
        with replacement (a member's random score is lifted above every other example's)."""
        members = (labels == torch.arange(self.ways, device=labels.device).unsqueeze(-1)).unsqueeze(1)
        scores = torch.rand(self.ways, self.generated, len(labels), device=labels.device) + members
        return scores.argmax(-1).flatten()


class HallucinatingProtoNet(Hallucination, ProtoNet):
    """Prototypes are the means of real and hallucinated support embeddings."""


class HallucinatingMatchingNet(Hallucination, MatchingNet):
    """Queries attend over real and hallucinated support embeddings."""


OPTIONS = (non_negative_int("generated", 5, "hallucinated examples per class (0: none, the base learner exactly)"), *generator_options(64, 512))
register_algorithm(
    AlgorithmSpec(
        "hallucination",
        HallucinatingProtoNet,
        "as `protonet`, with prototypes of real plus generated support embeddings; the generator learns through the query loss",
        options=OPTIONS,
        **EPISODIC,
    )
)
register_algorithm(
    AlgorithmSpec(
        "hallucination_matchingnet",
        HallucinatingMatchingNet,
        "as `matchingnet`, attending over real plus generated support embeddings",
        options=OPTIONS,
        **EPISODIC,
    )
)

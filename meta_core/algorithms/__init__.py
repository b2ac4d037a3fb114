"""Algorithms by name; each is a different per-task meta-gradient, nothing more."""

from meta_core.algorithms.anil import ANIL
from meta_core.algorithms.base import Algorithm
from meta_core.algorithms.imaml import IMAML
from meta_core.algorithms.maml import MAML
from meta_core.algorithms.maml_rl import MAMLRL
from meta_core.algorithms.mann import MANN
from meta_core.algorithms.matching import MatchingNet
from meta_core.algorithms.metasgd import MetaSGD
from meta_core.algorithms.protonet import ProtoNet
from meta_core.algorithms.reptile import Reptile

ALGORITHMS = {
    "maml": MAML,
    "fomaml": lambda *a, **k: MAML(*a, first_order=True, **k),
    "metasgd": MetaSGD,
    "anil": ANIL,
    "reptile": Reptile,
    "imaml": IMAML,
    "protonet": ProtoNet,
    "matchingnet": MatchingNet,
    "mann": MANN,
    "maml_rl": MAMLRL,
}
# Config keys under ``algorithm:`` that an algorithm takes beyond inner_steps and inner_lr.
OPTIONS = {"imaml": ("lam", "cg_steps"), "mann": ("controller_size", "memory_slots", "memory_width")}


def build_algorithm(name: str, model, kind: str, **options) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm.name: expected one of {sorted(ALGORITHMS)}, got {name!r}")
    return ALGORITHMS[name](model, kind, **options)


__all__ = ["ALGORITHMS", "OPTIONS", "Algorithm", "build_algorithm"]

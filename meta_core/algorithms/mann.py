"""A memory-augmented neural network (Santoro et al., 2016): LSTM controller, external memory, LRU writes.

An episode is a sequence: each support example arrives with the previous
example's label, so the network must store what it saw and bind it to the label
that follows. Each query is then the next step of that sequence, all queries in
parallel from the state after the support set. Images are embedded by the conv
net first (the paper fed raw pixels), which keeps the controller small.

MANN rather than SNAIL: Matching Networks already cover attention over the
support set, while MANN's explicit memory (content-based reads, least-recently-
used writes) is a different idea, and its state is a small fixed-size tensor
that a plain recurrent loop carries.

Two departures from the paper, both to make a small model learn in a few
hundred episodes: the read has a learned sharpness (the NTM's key strength),
and queries only read, since they bring no label to bind.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from meta_core.algorithms.episodic import EPISODIC, Episode, EpisodeLearner, one_hot
from meta_core.models import Params
from meta_core.registry import AlgorithmSpec, positive_int, register_algorithm
from meta_core.tasks import Task

USAGE_DECAY = 0.95  # gamma in the paper's usage update


class State(NamedTuple):
    hidden: torch.Tensor  # (batch, controller)
    cell: torch.Tensor  # (batch, controller)
    memory: torch.Tensor  # (batch, slots, width)
    usage: torch.Tensor  # (batch, slots)
    read_weights: torch.Tensor  # (batch, slots), the previous step's
    least_used: torch.Tensor  # (batch, slots), one-hot: the previous step's least-used slot

    def expand(self, batch: int) -> "State":
        return State(*(t.expand(batch, *t.shape[1:]) for t in self))


class MemoryNetwork(nn.Module):
    """``forward(support_x, support_y, query_x)`` -> query logits; the LSTM is written out so ``vmap`` can batch it."""

    def __init__(self, encoder: nn.Module, features: int, ways: int, controller: int, slots: int, width: int):
        super().__init__()
        self.encoder, self.ways, self.slots, self.width = encoder, ways, slots, width
        self.gates = nn.Linear(features + ways + controller, 4 * controller)
        self.key = nn.Linear(controller, width)  # read key, also the vector written
        self.write_gate = nn.Linear(controller, 1)  # sigma(alpha): write to the last-read slot vs the least-used one
        self.strength = nn.Linear(controller, 1)  # sharpness of the content-based read, as in the NTM's read heads
        self.head = nn.Linear(controller + width, ways)

    def initial(self, like: torch.Tensor) -> State:
        """The empty memory and controller, batch 1, on ``like``'s device; slot 0 is the first least used."""
        controller = self.gates.out_features // 4
        shapes = [(controller,), (controller,), (self.slots, self.width), (self.slots,), (self.slots,)]
        first = one_hot(like.new_zeros(1, dtype=torch.long), self.slots)
        return State(*(like.new_zeros(1, *shape) for shape in shapes), first)

    def step(self, features: torch.Tensor, previous_label: torch.Tensor, state: State, write: bool = True) -> tuple[torch.Tensor, State]:
        """One time step; ``write=False`` only reads (the queries, which bring no label to bind)."""
        inputs = torch.cat([features, previous_label, state.hidden], -1)
        i, f, g, o = self.gates(inputs).chunk(4, -1)
        cell = f.sigmoid() * state.cell + i.sigmoid() * g.tanh()
        hidden = o.sigmoid() * cell.tanh()
        key = self.key(hidden).tanh()
        # LRUA write: into the slot read last step (binding the label that just arrived to the
        # previous image) or into the least-used slot, cleared first; then read by cosine similarity.
        if write:
            alpha = self.write_gate(hidden).sigmoid()
            write_weights = alpha * state.read_weights + (1 - alpha) * state.least_used
            cleared = state.memory * (1 - state.least_used).unsqueeze(-1)
            memory = cleared + write_weights.unsqueeze(-1) * key.unsqueeze(1)
        else:
            write_weights, memory = torch.zeros_like(state.usage), state.memory
        similarity = (F.normalize(key, dim=-1).unsqueeze(1) * F.normalize(memory, dim=-1)).sum(-1)
        read_weights = (similarity * (1 + F.softplus(self.strength(hidden)))).softmax(-1)
        read = (read_weights.unsqueeze(-1) * memory).sum(1)
        usage = USAGE_DECAY * state.usage + read_weights + write_weights
        least_used = one_hot(usage.argmin(-1), self.slots)
        logits = self.head(torch.cat([hidden, read], -1))
        return logits, State(hidden, cell, memory, usage, read_weights, least_used)

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        support, queries = self.encoder(support_x), self.encoder(query_x)
        labels = one_hot(support_y, self.ways)
        state, previous = self.initial(support), support.new_zeros(1, self.ways)
        for t in range(support.shape[0]):
            _, state = self.step(support[t : t + 1], previous, state)
            previous = labels[t : t + 1]
        logits, _ = self.step(queries, previous.expand(len(queries), -1), state.expand(len(queries)), write=False)
        return logits


class MANN(EpisodeLearner):
    """``controller_size`` LSTM units; a memory of ``memory_slots`` rows of ``memory_width``. Its network is the
    ``MemoryNetwork`` around the embedding it is given, which reads the support sequence with the queries."""

    def __init__(self, model: nn.Module, kind: str, controller_size: int = 200, memory_slots: int = 128, memory_width: int = 40, **kwargs):
        super().__init__(model, kind, **kwargs)
        self.model = MemoryNetwork(model, self.features, self.ways, controller_size, memory_slots, memory_width)

    def adaptations(self, params: Params, task: Task, counts: list[int]) -> list[Episode]:
        """The support sequence itself, read into memory with the queries (``predict``)."""
        return [Episode(params, task.support_x, task.support_y)] * len(counts)

    def predict(self, adapted: Episode, query_x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, adapted.params, (adapted.support, adapted.labels, query_x))


register_algorithm(
    AlgorithmSpec(
        "mann",
        MANN,
        "query cross-entropy after reading the support sequence into an external memory",
        options=(
            positive_int("controller_size", 200, "LSTM controller units"),
            positive_int("memory_slots", 128, "memory rows"),
            positive_int("memory_width", 40, "values per memory row"),
        ),
        **EPISODIC,
    )
)

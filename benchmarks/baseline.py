"""The reference point: MAML as single-process libraries (learn2learn, higher) run it.

One Python loop over the meta-batch; per task, the inner loop is
``torch.autograd.grad(..., create_graph=True)`` on a list of weight tensors and
the query loss is back-propagated into ``.grad``. The networks are written out
with ``torch.nn.functional``, weight for weight the same as meta_core's MLP and
Conv4 (same parameter order), so both sides start from the same weights and
train on the same tasks; nothing of meta_core's computation is used here.

``compiled`` puts the query pass (forward and loss) through ``torch.compile``:
that is as much of this meta-gradient as torch can compile. A compiled graph's
backward cannot itself be differentiated ("aot_autograd does not currently
support double backward"), and second order differentiates the support pass's
gradient, so the support pass and inner loop stay eager.
"""

import torch
import torch.nn.functional as F
from torch._dynamo.exc import TorchDynamoException


def mlp(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2, w3, b3 = weights
    return F.linear(F.relu(F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)), w3, b3)


def conv4(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = x.unsqueeze(1) if x.dim() == 3 else x  # grayscale (batch, H, W), or colour (batch, C, H, W)
    for i in range(4):
        w, b, gamma, beta = weights[4 * i : 4 * i + 4]
        x = F.batch_norm(F.conv2d(x, w, b, padding=1), None, None, gamma, beta, training=True)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), weights[16], weights[17])


NETWORKS = {"mlp": (mlp, F.mse_loss), "conv4": (conv4, F.cross_entropy)}


class BaselineMAML:
    """Second-order MAML (``first_order=True``: FOMAML) with Adam on a list of weight tensors."""

    def __init__(
        self, network: str, weights: list[torch.Tensor], inner_lr: float, inner_steps: int, outer_lr: float, first_order=False, compiled=False
    ):  # fmt: skip
        self.forward, self.loss, self.compiled = *NETWORKS[network], compiled
        self.query_loss = torch.compile(self.task_loss, dynamic=False) if compiled else self.task_loss
        self.weights = [w.detach().clone().requires_grad_() for w in weights]
        self.inner_lr, self.inner_steps, self.first_order = inner_lr, inner_steps, first_order
        self.optimizer = torch.optim.Adam(self.weights, lr=outer_lr)

    def task_loss(self, weights: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(self.forward(weights, x), y)

    def adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[torch.Tensor]:
        fast = self.weights
        for _ in range(steps):
            grads = torch.autograd.grad(self.task_loss(fast, x, y), fast, create_graph=not self.first_order)
            fast = [w - self.inner_lr * g for w, g in zip(fast, grads, strict=True)]
        return fast

    def meta_gradient(self, tasks) -> None:
        """Mean meta-gradient over ``tasks`` into each weight's ``.grad``: one backward per task."""
        for w in self.weights:
            w.grad = None
        for task in tasks:
            fast = self.adapt(task.support_x, task.support_y, self.inner_steps)
            (self.query_loss(fast, task.query_x, task.query_y) / len(tasks)).backward()

    def step(self, tasks) -> None:
        self.meta_gradient(tasks)
        self.optimizer.step()


def warm_up(baseline: BaselineMAML, task) -> str | None:
    """One task's meta-gradient, so that compiling and first calls are paid before any clock starts. Returns torch's
    reason, in one line, where it cannot compile a compiled baseline, which is then reported as such, never timed
    eagerly; else None."""
    try:
        baseline.meta_gradient([task])
    except (TorchDynamoException, RuntimeError) as error:
        if not baseline.compiled:
            raise
        return f"{type(error).__name__}: " + (str(error).strip().splitlines() or [""])[0]
    return None

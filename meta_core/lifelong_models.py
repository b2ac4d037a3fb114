"""The lifelong learners' networks: OML's plain convolutional representation and ANML's neuromodulated one.

Neither normalises across a batch: a lifelong learner steps on one example at a time and is then scored on many at
once, so an example's output must not depend on the others beside it.
"""

from torch import nn

from meta_core.models import channels_and_side, head
from meta_core.registry import ModelSpec, Option, is_int, positive_int, register_model

OML_STRIDES = (2, 1, 2, 1, 2, 2)  # the OML paper's six 3x3 convolutions at 84x84: 3x3x256 = 2,304 features


def side_after(side: int, kernel: int, stride: int) -> int:
    return (side - kernel) // stride + 1


class PlainConv(nn.Module):
    """OML's representation network: 3x3 convolutions of ``width`` filters without padding or normalisation, each
    with its stride and a ReLU, flattened; then a linear head."""

    def __init__(self, outputs: int | None, width: int = 256, strides: tuple[int, ...] = OML_STRIDES, channels: int = 1, image_size: int = 84):
        super().__init__()
        layers, cin, side = [], channels, image_size
        for stride in strides:
            layers += [nn.Conv2d(cin, width, 3, stride=stride), nn.ReLU()]
            cin, side = width, side_after(side, 3, stride)
            if side < 1:
                raise ValueError(f"model.strides: {list(strides)} shrink a {image_size}-pixel image to nothing")
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.features = width * side * side
        self.head = head(self.features, outputs)

    def forward(self, x):
        if x.dim() == 3:  # (batch, H, W) -> (batch, 1, H, W)
            x = x.unsqueeze(1)
        return self.head(self.body(x))


def gated_block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    """ANML's block: a 3x3 convolution, each example's channels normalised over its own pixels (what ANML's batch
    norm of one image computes), a ReLU and, but for the last block, 2x2 max pooling."""
    layers = [nn.Conv2d(cin, cout, 3), nn.InstanceNorm2d(cout, affine=True), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)


def three_blocks(cin: int, width: int) -> nn.Sequential:
    return nn.Sequential(gated_block(cin, width, True), gated_block(width, width, True), gated_block(width, width, False), nn.Flatten())


class Neuromodulated(nn.Module):
    """ANML's network: the prediction network's features (three blocks of ``width`` filters, ``pln``) gated, one by
    one, by the sigmoid output of a neuromodulatory network (three blocks of ``nm_width`` filters and a linear layer,
    ``nm``); then a linear head. 28x28 inputs give the paper's 3x3x256 = 2,304 features."""

    def __init__(self, outputs: int | None, width: int = 256, nm_width: int = 112, channels: int = 1, image_size: int = 28):
        super().__init__()
        side = side_after(side_after(side_after(side_after(side_after(image_size, 3, 1), 2, 2), 3, 1), 2, 2), 3, 1)
        if side < 1:
            raise ValueError(f"data.image_size: {image_size} pixels are too few for ANML's three blocks (at least 22)")
        self.pln, self.features = three_blocks(channels, width), width * side * side
        self.nm = nn.Sequential(three_blocks(channels, nm_width), nn.Linear(nm_width * side * side, self.features), nn.Sigmoid())
        self.head = head(self.features, outputs)

    def forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.head(self.pln(x) * self.nm(x))


def strides(name: str, default: tuple[int, ...], help: str) -> Option:
    return Option(
        name, list(default), "a list of positive integers", lambda v: isinstance(v, list) and bool(v) and all(is_int(s) and s > 0 for s in v), help
    )


register_model(
    ModelSpec(
        "oml_conv",
        lambda shape, outputs, width, strides: PlainConv(outputs, width, tuple(strides), *channels_and_side(shape)),
        "OML's representation: 3x3 convolutions without normalisation, and a linear head",
        inputs=("images",),
        options=(
            positive_int("width", 256, "filters per layer"),
            strides("strides", OML_STRIDES, "one stride per convolution (the paper's six at 84x84; e.g. [2, 1, 2, 1] at 28x28)"),
        ),
    )
)
register_model(
    ModelSpec(
        "anml_net",
        lambda shape, outputs, width, nm_width: Neuromodulated(outputs, width, nm_width, *channels_and_side(shape)),
        "ANML's prediction network gated by a neuromodulatory network, and a linear head",
        inputs=("images",),
        options=(positive_int("width", 256, "prediction network filters"), positive_int("nm_width", 112, "neuromodulatory network filters")),
    )
)

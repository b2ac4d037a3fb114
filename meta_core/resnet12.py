"""ResNet-12, the backbone of MetaOptNet (Lee et al. 2019) and FEAT (Ye et al. 2020), as a pure function of its weights.

Four residual blocks of three 3x3 convolutions (64, 160, 320 and 640 filters at
``width`` 64), each block with a 1x1 projection on its shortcut and a 2x2 max-pool
after it, then a global average pool: a 640-value embedding for any image size
(5x5 before the pool at 84x84). Without DropBlock, and with batch norm on the
batch's own statistics, as every model here (running statistics would leak
information across tasks).
"""

from torch import nn

from meta_core.models import channels_and_side, head
from meta_core.registry import ModelSpec, positive_int, register_model

GROWTH = (1, 2.5, 5, 10)  # each block's filters, as multiples of ``width``: 64-160-320-640


def conv_bn(cin: int, cout: int, size: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, size, padding=size // 2, bias=False), nn.BatchNorm2d(cout, track_running_stats=False)]


class Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convs = nn.Sequential(*conv_bn(cin, cout), nn.LeakyReLU(0.1), *conv_bn(cout, cout), nn.LeakyReLU(0.1), *conv_bn(cout, cout))
        self.shortcut = nn.Sequential(*conv_bn(cin, cout, size=1))
        self.out = nn.Sequential(nn.LeakyReLU(0.1), nn.MaxPool2d(2))

    def forward(self, x):
        return self.out(self.convs(x) + self.shortcut(x))


class ResNet12(nn.Module):
    def __init__(self, ways: int | None, width: int = 64, channels: int = 3):
        super().__init__()
        sizes = [channels, *(int(width * g) for g in GROWTH)]
        self.body = nn.Sequential(*(Block(a, b) for a, b in zip(sizes, sizes[1:], strict=False)), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.features, self.head = sizes[-1], head(sizes[-1], ways)

    def forward(self, x):
        if x.dim() == 3:  # (batch, H, W) -> (batch, 1, H, W)
            x = x.unsqueeze(1)
        return self.head(self.body(x))


RESNET12_SPEC = register_model(
    ModelSpec(
        "resnet12",
        lambda shape, outputs, width: ResNet12(outputs, width, channels_and_side(shape)[0]),
        "four residual blocks of three 3x3 convolutions, 64-160-320-640 filters at width 64, then a global average pool",
        inputs=("images",),
        options=(positive_int("width", 64, "the first block's filters; the others 2.5x, 5x and 10x that"),),
    )
)

"""A tiny fully-convolutional segmenter registered from outside petseg-bench."""

from torch import nn

from petseg_bench import hookimpl
from petseg_bench.specs import ModelConfig, ModelSpec


class TinyFCN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.base_channels
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, config.n_classes, 1),
        )

    def forward(self, image):
        return self.net(image)


def build(config: ModelConfig) -> nn.Module:
    config.validate()
    return TinyFCN(config)


@hookimpl
def petseg_bench_models():
    return [ModelSpec(name="example_fcn", build=build, description="third-party example: 2-layer FCN",
                      defaults={"base_channels": 8})]

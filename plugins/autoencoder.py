"""Built-in model ``autoencoder``: a two-stage convolutional autoencoder.

Stage 1 (``reconstruct``) trains encoder + reconstruction decoder to reproduce the
(ImageNet-normalised) input with MSE. Stage 2 (``segment``) puts a segmentation decoder
of the same structure (no skips) on the encoder, which is frozen when
``config.freeze_encoder`` is set and fine-tuned otherwise.

Phase contract with the harness: ``model.set_phase("reconstruct")`` makes ``forward``
return the reconstruction ``[B, 3, H, W]`` (no output activation: it is compared with
the normalised image); ``model.set_phase("segment")`` makes it return class logits.
A freshly built model starts in ``segment`` so that a loaded checkpoint predicts
masks without further calls.
"""

from __future__ import annotations

import torch
from torch import nn

from petseg_bench import hookimpl
from petseg_bench.errors import PetsegError
from petseg_bench.specs import ModelConfig, ModelOption, ModelSpec, PaperFigures, Phase

from .blocks import BASE_CHANNELS, DROPOUT, check_width_and_dropout

PHASES = ("reconstruct", "segment")
_ALIASES = {"reconstruction": "reconstruct", "segmentation": "segment"}


NORMS = ("none", "batch")


def _act(channels: int, norm: str) -> list[nn.Module]:
    """LeakyReLU, after a BatchNorm when ``norm`` is "batch" (an option: it lost on validation
    at the quick profile, so no profile turns it on; reports/reference/README.md)."""
    return ([nn.BatchNorm2d(channels)] if norm == "batch" else []) + [nn.LeakyReLU(0.01, inplace=True)]


def _encoder(in_channels: int, width: int, first: int, spatial: int, latent_dim: int, norm: str = "none") -> nn.Sequential:
    """Conv stack with LeakyReLU: one stride-1 conv, four stride-2 convs to in/16, then a linear latent."""
    chans = [first, width, width, width, width]
    layers: list[nn.Module] = [nn.Conv2d(in_channels, first, 3, stride=1, padding=1), *_act(first, norm)]
    for cin, cout in zip(chans[:-1], chans[1:]):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), *_act(cout, norm)]
    return nn.Sequential(*layers, nn.Flatten(1), nn.Linear(width * spatial * spatial, latent_dim))


def _decoder(out_channels: int, width: int, last: int, spatial: int, latent_dim: int, dropout: float = 0.0,
             norm: str = "none") -> nn.Sequential:
    """Linear back to ``width x spatial^2``, four stride-2 ConvTranspose2d (LeakyReLU) to full size, 3x3 conv out."""
    chans = [width, width, width, last, last]
    layers: list[nn.Module] = [
        nn.Linear(latent_dim, width * spatial * spatial),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Unflatten(1, (width, spatial, spatial)),
    ]
    for cin, cout in zip(chans[:-1], chans[1:]):
        layers += [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1), *_act(cout, norm)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
    layers.append(nn.Conv2d(last, out_channels, 3, padding=1))
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    def __init__(self, config: ModelConfig, in_channels: int = 3):
        super().__init__()
        c = config
        width = c.opt("base_channels")
        narrow = max(width // 2, 1)
        spatial = c.in_size // 16
        latent = c.opt("latent_dim")
        self.freeze_encoder = bool(c.opt("freeze_encoder"))
        norm = c.opt("norm")
        self.encoder = _encoder(in_channels, width, narrow, spatial, latent, norm)
        self.reconstruction_decoder = _decoder(in_channels, width, narrow, spatial, latent, norm=norm)
        self.segmentation_decoder = _decoder(c.n_classes, width, narrow, spatial, latent, c.opt("dropout"), norm)
        self.phase = "segment"
        self._encoder_frozen = False

    def set_phase(self, name: str) -> "Autoencoder":
        """Switch what ``forward`` returns: ``reconstruct`` (image) or ``segment`` (logits).

        Entering ``segment`` with ``freeze_encoder`` sets the encoder's parameters to
        ``requires_grad=False`` and keeps it in eval mode; ``reconstruct`` unfreezes it.
        """
        phase = _ALIASES.get(name, name)
        if phase not in PHASES:
            raise PetsegError(f"autoencoder: unknown phase {name!r}; expected one of {', '.join(PHASES)}")
        self.phase = phase
        frozen = phase == "segment" and self.freeze_encoder
        self._encoder_frozen = frozen
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.encoder.eval()
        else:
            self.encoder.train(self.training)
        return self

    def train(self, mode: bool = True) -> "Autoencoder":
        super().train(mode)
        if self._encoder_frozen:
            self.encoder.eval()
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self._encoder_frozen:
            with torch.no_grad():
                z = self.encoder(image)
        else:
            z = self.encoder(image)
        if self.phase == "reconstruct":
            return self.reconstruction_decoder(z)
        return self.segmentation_decoder(z)


def build(config: ModelConfig) -> nn.Module:
    config.validate()
    return Autoencoder(config)


def _prepare(options: dict) -> dict:
    if options["latent_dim"] < 1:
        raise ValueError(f"latent_dim must be >= 1, got {options['latent_dim']}")
    return check_width_and_dropout(options)


@hookimpl
def petseg_bench_models():
    return [
        ModelSpec(
            name="autoencoder",
            label="Autoencoder",
            build=build,
            description="Conv autoencoder (LeakyReLU, linear latent): reconstruction pretraining, then a segmentation decoder without skips",
            inputs=("image",),
            phases=(
                Phase("reconstruct", loss="reconstruction", epochs_fraction=0.5),
                Phase("segment", loss="segmentation", epochs_fraction=0.5),
            ),
            options=(
                ModelOption("latent_dim", 1024, "size of the linear latent", flag="--latent-dim"),
                ModelOption("norm", "none", "normalisation after each conv: none (the seed's) or batch", NORMS,
                            flag="--norm"),
                ModelOption("freeze_encoder", False, "stage 2: keep the pretrained encoder fixed (else fine-tune it)",
                            flag="--freeze-encoder/--finetune-encoder"),
                BASE_CHANNELS, DROPOUT,
            ),
            prepare_options=_prepare,
            # Reference: the segmentation stage needs many epochs more than reconstruction (validation
            # mIoU 0.30 after 8 + 8 epochs, 0.44 after 8 + 32, 0.55 after 8 + 96; about 5 s per segmentation
            # epoch on 2 idle cores; reports/reference/README.md).
            profiles={"quick": {"latent_dim": 256},
                      "reference": {"latent_dim": 512, "base_channels": 32, "phase_epochs": (8, 96), "restart_epochs": 96}},
            paper=PaperFigures("Autoencoder", (0.56, 0.63, 0.74), (0.75, 0.67, 0.27)),
        )
    ]

"""Inference-only graph tidying: fold BatchNorm into the convolution before it.

In eval mode ``BN(conv(x))`` is an affine map of ``conv(x)``, so it can live in the
convolution's weights and bias: one pass over memory instead of two. Works on any
model whose conv/BN pairs sit next to each other in an ``nn.Sequential``, built-in
or third-party, and on modules that name their pairs in a ``fold_pairs`` attribute
(``(("conv_attr", "bn_attr"), ...)``: the conv's output goes to that BN and nowhere
else, as in an EfficientNet block); anything else is left as it is.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every (Conv2d, BatchNorm2d) pair inside Sequentials and every pair a module
    names in ``fold_pairs``; returns how many.

    Only for inference: the folded model must not be trained again.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            folded += _fold_pair(seq, a, b)
    for module in list(model.modules()):
        for conv_name, bn_name in getattr(module, "fold_pairs", ()):
            folded += _fold_pair(module, conv_name, bn_name)
    return folded


def _fold_pair(owner: nn.Module, conv_name: str, bn_name: str) -> int:
    """Fold ``owner.<bn_name>`` into ``owner.<conv_name>`` where they are a Conv2d and a
    BatchNorm2d with running statistics; 1 if folded, else 0."""
    conv, bn = owner._modules.get(conv_name), owner._modules.get(bn_name)
    if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None):
        return 0
    fused = fuse_conv_bn_eval(conv, bn)
    owner._modules[conv_name] = fused.to(memory_format=torch.channels_last) if _is_cl(conv) else fused
    owner._modules[bn_name] = nn.Identity()
    return 1


def _is_cl(conv: nn.Conv2d) -> bool:
    return conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()

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
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None:
                fused = fuse_conv_bn_eval(conv, bn)
                seq._modules[a] = fused.to(memory_format=torch.channels_last) if _is_cl(conv) else fused
                seq._modules[b] = nn.Identity()
                folded += 1
    for module in list(model.modules()):
        for conv_name, bn_name in getattr(module, "fold_pairs", ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None:
                fused = fuse_conv_bn_eval(conv, bn)
                setattr(module, conv_name, fused.to(memory_format=torch.channels_last) if _is_cl(conv) else fused)
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded


def _is_cl(conv: nn.Conv2d) -> bool:
    return conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()

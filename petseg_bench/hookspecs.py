"""The hooks a petseg-bench plugin can implement.

A plugin is any module or object registered under the ``petseg_bench`` entry-point
group (built-ins use the same group). It implements hooks with::

    from petseg_bench import hookimpl

    @hookimpl
    def petseg_bench_models():
        return [ModelSpec(name="my_net", build=build_my_net)]

Every hook returns a list of specs (see :mod:`petseg_bench.specs`); the harness merges
the lists of all plugins. Names must be unique across plugins.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("petseg_bench")
hookimpl = pluggy.HookimplMarker("petseg_bench")


@hookspec
def petseg_bench_models():
    """Return a list of :class:`~petseg_bench.specs.ModelSpec`: segmentation models.

    Each spec names the model, gives ``build(ModelConfig) -> torch.nn.Module``, the
    inputs the model's ``forward`` takes (``image``; ``point``, a click per image;
    ``backbone``, features of a frozen backbone the harness computes), its image
    mean/std, its CE/Dice loss weights, its training phases (one, or e.g.
    reconstruction then segmentation), its own options with their defaults and
    per-profile values, which parameters are frozen (left out of checkpoints), its
    display label and the seed study's figures for it. The model trains with
    ``petseg-bench train`` and joins sweeps with no other change.
    """


@hookspec
def petseg_bench_backbones():
    """Return a list of :class:`~petseg_bench.specs.BackboneSpec`: frozen feature extractors.

    Each spec names a backbone family and gives ``build(argument) ->
    petseg_bench.backbones.Backbone``; users pick one by key ``<family>:<argument>``
    (``efficientnet:lite0``) in a model's backbone option. The backbone declares its
    preprocessing (mean, std, input size, interpolation) and its outputs (a pooled
    embedding of dimension D, optionally feature maps) as data; the harness builds it once
    per process and computes its features once per batch for every model sharing it.
    """


@hookspec
def petseg_bench_perturbations():
    """Return a list of :class:`~petseg_bench.specs.PerturbationSpec`: image corruptions.

    Each spec gives the ordered severity levels (level 0 is the clean image) with
    their parameter values, and ``apply(images, value, rngs)``: a batched function over
    uint8 RGB images at original resolution (sizes may differ), with one
    ``numpy.random.Generator`` per image, deterministic for given generators.

    A perturbation may act on the click of point-prompted models instead (or as well):
    ``target="clicks"`` with ``apply_clicks(clicks, labels, value, rngs) -> clicks``, the
    evaluation clicks ``[B, 2]`` (y, x) in original image pixels moved with the ground
    truth at hand, one generator per image. Its cells are computed only for models with
    a ``point`` input; for the others the report shows n/a.

    ``family`` (and ``family_label``) names the corruption family a perturbation belongs
    to, e.g. a benchmark's standard set: corruption errors (CE) are averaged per family,
    so a run mixing families reports an mCE per family instead of one over everything.
    """


@hookspec
def petseg_bench_metrics():
    """Return a list of :class:`~petseg_bench.specs.MetricSpec`: evaluation metrics.

    Each spec computes its value from 3x3 confusion matrices (per class, with NaN for a
    class absent from the ground truth, or one scalar) and says whether higher is
    better. The harness applies both reductions (dataset and seed) to every metric.
    """

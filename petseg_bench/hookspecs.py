"""The hooks a petseg-bench plugin can implement.

A plugin is any module or object registered under the ``petseg_bench`` entry-point
group (built-ins use the same group). It implements hooks with::

    from petseg_bench import hookimpl

    @hookimpl
    def petseg_bench_models():
        return [ModelSpec(name="my_net", build=build_my_net)]

Every hook returns a list of specs (see :mod:`petseg_bench.specs`, where each field is
documented); the harness merges the lists of all plugins. Names must be unique across
plugins: built-ins load first and keep a name, a later spec of that name is ignored.

Each hook's docstring ends with a **Runs under** section: what the engine does with
what the hook returns (threads, precision, memory layout, compilation, batch padding,
BatchNorm folding, training phases), as the code does it today. A plugin that holds to
it gives the same pixels and cells however the work is split (threads, sub-batches,
shards, Ray workers) and across a resume.

The hooks themselves run once per process (the registry is built on first use and
cached: :func:`petseg_bench.plugins.get_registry`), in every process that needs
plugins, ``petseg-bench list`` included; keep their imports light. A hook that raises,
or returns something other than a list of its spec type, contributes nothing and leaves
one warning line (``petseg-bench list`` prints them); a spec whose ``validate()`` fails
is skipped the same way, and the other plugins keep working.
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

    Runs under:

    - ``build(config)`` makes every instance: before training with
      ``torch.manual_seed(seed)`` set, unseeded when a checkpoint is loaded (``evaluate``,
      each sweep process, the report's example strips, the app). The module is then
      moved to the device with channels_last memory format
      (:func:`~petseg_bench.engine.predictor.build_model`). A build that raises is one
      line naming the model.
    - Weights: a checkpoint holds the state dict less the ``frozen`` prefixes and is read
      with ``torch.load(weights_only=True)`` (tensors and plain data only); it must fit
      exactly, except under ``frozen``, so ``build`` itself recreates every frozen part
      (e.g. a pretrained encoder from its package). Non-finite weights are refused.
    - Inference (``evaluate``, every sweep cell, validation during training, the report's
      example strips, the app) goes through one
      :class:`~petseg_bench.engine.predictor.Predictor`: the model in eval mode, under
      ``torch.no_grad()``, ``forward`` called with keyword arguments only. ``image`` is
      float32 ``[B, 3, S, S]`` in channels_last layout, S the config's ``in_size``: the
      image letterboxed (scaled to fit, the rest of the square zero pixels, before
      normalising) and normalised with the spec's mean/std; ``point`` is int64 ``[B, 2]``
      (y, x) in input pixels; ``backbone`` is float32
      :class:`~petseg_bench.backbones.Features`.
    - Precision: ``forward`` runs inside ``torch.autocast`` in bfloat16 (float16 on a CUDA
      GPU without bf16) unless the run's precision is fp32; ``--precision auto`` picks
      bf16 where the device has it natively (:mod:`petseg_bench.engine.runtime`). Its
      output is cast to float32 afterwards.
    - Batches: a batch larger than ``Predictor.max_pixels`` allows (16 images at 256 px)
      is fed in slices. Under ``run --compile`` the forward is
      ``torch.compile(model, dynamic=False)`` and every slice is zero-padded with all-zero
      items (image, point and backbone features alike) to one fixed batch size; the
      padded items' outputs are dropped. So an image's logits must not depend on the
      other images of its batch.
    - BatchNorm: :func:`~petseg_bench.engine.predictor.load_predictor` folds every
      ``BatchNorm2d`` into the ``Conv2d`` before it where the two are neighbours in an
      ``nn.Sequential`` or the module names the pair in a ``fold_pairs`` attribute
      (:mod:`petseg_bench.bn_fold`); any other BatchNorm stays. A loaded model is
      never trained again. Validation during training uses the unfolded model.
    - Phases: training calls ``model.set_phase(name)`` before each phase when the spec
      has more than one. Inference never calls it, so ``build`` must return a model in
      its final (segmentation) phase: that is how every loaded checkpoint runs.
    - Training: the same channels_last inputs and autocast, the model in train mode and,
      under torchrun, wrapped in ``DistributedDataParallel`` (a static graph, wrapped
      again per phase). Validation runs after the segmentation phases' epochs only.
    - Output: logits ``[B, n_classes, S, S]``. The harness cuts the letterbox's border
      off, resizes each image's logits back to its original resolution (bilinear) and
      takes the argmax (first class wins ties); channels_last logits are the cheapest to
      move. An exception from ``forward`` is one line naming the model and where (the
      cell, or the training step).
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

    Runs under:

    - ``build(argument)`` runs once per key per process (cached under a lock and shared
      by every model and thread). It must return a
      :class:`~petseg_bench.backbones.Backbone`; anything else, or an exception, is one
      line. The harness then sets its ``key``, freezes it (no gradients, eval mode for
      good: ``train()`` leaves it in eval), gives its weights channels_last memory
      format and folds its BatchNorms into their convolutions as for models (neighbours
      in an ``nn.Sequential``, pairs named in ``fold_pairs``), in training too.
    - ``extract(x)`` runs under ``torch.no_grad()`` and the run's autocast (bfloat16, or
      float16 on a CUDA GPU without bf16, unless the precision is fp32), once per batch
      and input size, its features shared by every model of that batch using the same
      key. ``x`` is the letterboxed uint8 batch as float 0..1, resized to
      ``preprocess.size`` (antialiased when ``interpolation`` smooths), normalised with
      ``preprocess.mean``/``std``, in the plain contiguous layout (not channels_last).
    - The features are cast to float32 and reach each model as its ``backbone`` input,
      sliced and, under ``run --compile``, zero-padded along the batch like the image:
      the backbone itself is not compiled. Its weights are never stored in checkpoints;
      :meth:`~petseg_bench.backbones.Backbone.describe` is what checkpoints, run records
      and reports say about it.
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

    An adversarial attack is a perturbation with ``target="model"`` and ``attack(forward,
    images, labels, value, rngs) -> images``: it is computed per model from that model's
    own gradient, on the image the model sees. The engine passes the letterboxed batch as
    float pixels 0..255, the model's differentiable forward on such a batch (logits
    ``[B, C, S, S]``), the ground truth at that resolution with 255 (void, padding) to be
    left out of the loss, the level's value and one generator per image; the built-in
    ``adv_*`` attacks (FGSM, PGD, SegPGD, a random-sign baseline) are written this way.
    Attacks are left out of ``--perturbations all``; name them or use a wildcard.

    ``family`` (and ``family_label``) names the corruption family a perturbation belongs
    to, e.g. a benchmark's standard set: corruption errors (CE) are averaged per family,
    so a run mixing families reports an mCE per family instead of one over everything.

    Runs under:

    - Several threads at once: a sweep (:func:`~petseg_bench.engine.sweep.run_group`)
      splits each batch of test images into contiguous sub-batches, one per torch thread
      (:func:`~petseg_bench.engine.runtime.in_parallel`), and calls ``apply`` on all of
      them at the same time, from the calling thread and the ``petseg-host`` helper
      threads; beside a GPU this happens on a background thread that prepares the next
      batch while the models compute. Ray runs groups in several processes besides. So
      ``apply`` must be thread-safe: no shared mutable state without a lock, and no
      global random state (``np.random.*`` functions, ``random``, torch's default
      generator, or a library that draws from them: the ImageNet-C pack routes its
      library's draws to a thread-local generator for this reason).
    - One generator per image, seeded by (run seed, perturbation name, level, image id)
      (:func:`~petseg_bench.perturbation.image_rng`). Image i's output must depend only on
      ``images[i]``, ``value`` and ``rngs[i]``, never on the other images, their number or
      order: cells are resumed, sharded and recomputed in other batches, and the report's
      example strips and the app perturb one image at a time and must show the sweep's
      pixels.
    - Input: a list of uint8 ``HxWx3`` RGB arrays at original resolution, sizes differing
      within a batch, and ``value = levels[level]``; ``apply`` is never called at level 0.
      The arrays may be read-only views of the memory-mapped prepared cache, shared by
      every cell: never write into them. Return a list of new uint8 arrays, one per
      image, each of its input's shape. Anything else, or an exception, is one line
      naming the perturbation, the level and the image (on an exception the batch is
      retried image by image to find it). The result is then letterboxed per model.
    - Speed: numpy and OpenCV calls release the GIL and so run in parallel on those
      threads; a pure-Python loop over pixels holds it and serialises them.
    - ``apply_clicks`` runs once per (perturbation, level) in the process computing that
      group, on every image of the sweep at once (not split, not threaded), with int64
      clicks ``[N, 2]`` and the ground truths at original resolution (the app passes the
      clean prediction instead, having no ground truth). It returns finite ``[N, 2]``
      clicks inside each image, which the harness rounds; one generator per image as
      above. A click outside the image, a non-finite value or another shape is one line.
    - ``attack`` (``target="model"``) runs in the process computing the group, on the
      calling thread, per model and per slice of the predictor's batch (as the forward is
      sliced), after ``apply`` and the letterbox
      (:func:`~petseg_bench.engine.attack.attacked_logits`). ``forward`` runs the model
      in eval mode in fp32 whatever the run's precision, with gradients enabled, through
      the frozen backbone's ``extract`` (its features are not shared with other models
      here) and with a point model's click unchanged
      (:func:`~petseg_bench.engine.attack.differentiable_forward`); ``torch.compile`` is
      not used for it. The generators are seeded by (run seed, perturbation, level, image
      id, model) (:func:`~petseg_bench.engine.attack.attack_rng`). The returned images
      must be finite floats of the input's shape within 0..255 (anything else, or an
      exception, is one line naming the attack, the level and the model); they are not
      rounded, and the model's logits on them (under the run's precision) are scored at
      the original resolution like every cell.
    """


@hookspec
def petseg_bench_metrics():
    """Return a list of :class:`~petseg_bench.specs.MetricSpec`: evaluation metrics.

    Each spec computes its value from 3x3 confusion matrices (per class, with NaN for a
    class absent from the ground truth, or one scalar) and says whether higher is
    better. The harness applies both reductions (dataset and seed) to every metric.

    Runs under:

    - ``fn`` is a pure numpy function of confusion counts (rows ground truth, columns
      prediction, C = 3). It is called on ``[C, C]`` (the split's matrices summed: the
      dataset reduction), ``[N, C, C]`` (one per image: the seed reduction) and, for
      bootstrap intervals, float64 arrays (``[n_boot, C, C]`` weighted sums of the
      per-image matrices, and those matrices as float): it must work over any leading
      axes and on float counts.
    - The per-image matrices are counted once, at each image's original mask resolution
      from the restored prediction (:func:`~petseg_bench.metrics.confusion_matrix`); void
      pixels are not counted under ``--void ignore`` and filled from their nearest
      labelled pixel under ``--void nearest``. Every metric is computed from them; no
      metric sees logits or images.
    - Return NaN where the score is undefined (the class is absent from the ground
      truth); the harness then applies the absent-class rules of
      :mod:`petseg_bench.metrics` (dataset: 0 for a class predicted but absent; seed: a
      class no image contains scores 0).
    - Where it shows: ``petseg-bench evaluate`` reports every registered metric under
      both reductions with a bootstrap 95% interval (``--bootstrap`` replicates).
      Validation during training, the sweep's summary, report and ``check`` use the
      built-in ``iou``, ``dice`` and ``pixel_accuracy``.
    """


@hookspec
def petseg_bench_model_families():
    """Return a list of :class:`~petseg_bench.families.ModelFamilySpec`: models chosen by key.

    A family names models ``<family>:<argument>`` the way backbones are keyed
    (``onnx:model.onnx``, ``torchscript:model.pt``, ``smp:Unet:resnet18``); its
    ``build(argument)`` returns the :class:`~petseg_bench.specs.ModelSpec` of that one
    model. ``model_file=True`` says the argument is a file holding a trained model
    (evaluation only); ``unavailable`` (one line with the install command) lists the
    family without offering it, as for perturbations.

    Runs under:

    - ``build(argument)`` runs once per key per process, the first time the key is asked
      for (``--models``, ``train KEY``, a checkpoint recording the key), not when the
      registry is built; the spec is cached. An exception, or anything but a
      ``ModelSpec``, is one line naming the key. The spec's own ``name`` is replaced by
      the key and then validated like any model's.
    - From then on the model is a model like any other, under everything
      :func:`petseg_bench_models` describes. A trainable family's checkpoints go to
      ``OUT/<folder>/best.pt``, ``<folder>`` being
      :func:`~petseg_bench.families.model_dirname` of the key (``:`` -> ``+``); they
      record the key. A model file needs no checkpoint: ``run`` records the file's
      sha256 in the checkpoint's place, ``evaluate FILE`` takes it, ``train`` refuses it.
    - Wildcards and ``all`` in ``--models`` never expand to family keys: name them.
    """

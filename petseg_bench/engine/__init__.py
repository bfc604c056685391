"""The engine: one training loop, one inference path, one sweep.

Data flows ``data`` -> ``perturbation`` -> ``inputs`` (letterbox, normalise, clicks,
backbone features) -> ``predictor`` (the model's forward, logits back to the original
resolution) -> ``inference`` (per-image confusion matrices) -> ``results`` (cells) ->
``reporting``.
"""

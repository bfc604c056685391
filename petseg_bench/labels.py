"""The label space every model predicts, and the value that marks ignored pixels."""

CLASS_NAMES = ("background", "cat", "dog")
N_CLASSES = len(CLASS_NAMES)
#: Label value of void (border) pixels kept as "ignore": skipped by losses and metrics.
IGNORE = 255

"""Click types shared by every command's options: numbers that are numbers.

``float("nan")`` and ``float("inf")`` parse, and a NaN compares false with everything,
so ``--tolerance nan`` would pass every check; every float option (and every
comma-separated list of floats) goes through :class:`FiniteFloat` instead.
"""

from __future__ import annotations

import math

import click


def finite_float(text, what: str, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> float:
    """``text`` as a finite float within the bounds, else ValueError with one line
    naming ``what`` (an option, a config key)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{what} needs a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} needs a finite number, got {text!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"{what} needs a number {'>' if lo_open else '>='} {lo:g}, got {text!r}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ValueError(f"{what} needs a number {'<' if hi_open else '<='} {hi:g}, got {text!r}")
    return value


class FiniteFloat(click.ParamType):
    """A finite float, optionally within ``[min, max]`` (``min_open``/``max_open``:
    strict bounds). NaN and +-inf are refused in one line naming the option."""

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None,  # noqa: A002 - click's names
                 min_open: bool = False, max_open: bool = False):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value) and self._inside(value):
            return value
        try:
            return finite_float(value, _label(param), self.min, self.max, self.min_open, self.max_open)
        except ValueError as exc:
            self.fail(_without_label(str(exc), param), param, ctx)

    def _inside(self, v: float) -> bool:
        return ((self.min is None or v > self.min or (not self.min_open and v == self.min))
                and (self.max is None or v < self.max or (not self.max_open and v == self.max)))

    def get_metavar(self, param, ctx=None) -> str:  # noqa: ARG002 - click's signature
        return "FLOAT"


class FiniteFloatList(click.ParamType):
    """Comma-separated finite floats (``--class-weights 0.3,2.2,0.8``), ``n`` of them
    when given, each within the bounds; a tuple of floats."""

    name = "floats"

    def __init__(self, n: int | None = None, min: float | None = None, max: float | None = None,  # noqa: A002
                 min_open: bool = False, max_open: bool = False):
        self.n, self.item = n, FiniteFloat(min, max, min_open, max_open)

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            items = list(value)
        else:
            items = [v.strip() for v in str(value).split(",")]
        if self.n is not None and len(items) != self.n:
            self.fail(f"needs {self.n} comma-separated numbers, got {value!r}", param, ctx)
        out = []
        for v in items:
            try:
                out.append(finite_float(v, "each value", self.item.min, self.item.max,
                                        self.item.min_open, self.item.max_open))
            except ValueError as exc:
                self.fail(f"{exc} (in {value!r})", param, ctx)
        return tuple(out)

    def get_metavar(self, param, ctx=None) -> str:  # noqa: ARG002
        return "F,F,..." if self.n is None else ",".join(["F"] * self.n)


def _label(param) -> str:
    return param.opts[0] if param is not None and getattr(param, "opts", None) else "value"


def _without_label(text: str, param) -> str:
    """click's fail() already names the option ("Invalid value for '--x': ..."): drop ours."""
    label = _label(param)
    return text[len(label) + 1:] if text.startswith(label + " ") else text

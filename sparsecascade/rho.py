"""The confidence threshold ``rho`` as the cascade takes it: one number in [0, 1] for every stage (the
paper's), or one per stage that can stop pixels (every stage but the last), written "0.9/0.5" on the
command line and in tables. Imports nothing of the package: the model, the writers and the command
line all check, print and parse it the same way."""
from __future__ import annotations

from numbers import Real
from typing import Optional, Union

Rho = Union[float, tuple[float, ...]]  # one threshold, or one per stage but the last


def check_rho(value, num_stages: Optional[int] = None, name: str = "rho") -> Rho:
    """``value`` as a rho: a number in [0, 1], or a sequence of such numbers, one per stage but the last
    (its length checked when ``num_stages`` is given). Returns a float or a tuple of floats."""
    def number(v) -> bool:
        return not isinstance(v, bool) and isinstance(v, Real) and 0.0 <= v <= 1.0  # NaN fails too

    if number(value):
        return float(value)
    if isinstance(value, (list, tuple)) and value and all(number(v) for v in value):
        if num_stages is not None and len(value) != num_stages - 1:
            raise ValueError(f"{name}: expected one number in [0, 1] or {num_stages - 1} (one per stage but the "
                             f"last of {num_stages}), got {len(value)}: {list(value)!r}")
        return tuple(float(v) for v in value)
    raise ValueError(f"{name}: expected a number in [0, 1] or a sequence of them (one per stage but the last), "
                     f"got {value!r}")


def format_rho(rho: Rho) -> str:
    """``0.7`` -> "0.7"; per stage ``(0.9, 0.5)`` (or a list, as JSON gives it) -> "0.9/0.5", the command
    line's spelling."""
    return "/".join(f"{r:g}" for r in rho) if isinstance(rho, (tuple, list)) else f"{rho:g}"


def parse_rho(text: str, name: str = "rho") -> Rho:
    """"0.7" -> 0.7; "0.9/0.5" -> (0.9, 0.5); anything else a ValueError naming ``name``."""
    try:
        values = [float(part) for part in str(text).split("/")]
    except ValueError:
        raise ValueError(f"{name}: expected a number in [0, 1] or one per stage but the last joined by '/' "
                         f"(0.9/0.5), got {text!r}") from None
    return check_rho(values[0] if len(values) == 1 else values, name=name)

"""What several commands share: the option types (argparse ``type=`` functions that refuse a bad value
with a one-line message), ``--threads``, the default ``--model`` and loading the model an option names.

Nothing heavy at import: torch, the zoo and the hub are imported where they are used.
"""
from __future__ import annotations

import argparse
import json

from ..rho import Rho, parse_rho

SUPPRESS = argparse.SUPPRESS  # "not given": a recipe's value, else the TrainConfig default, stays


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def rho_value(text: str) -> Rho:
    """A rho: "0.7", or one per stage but the last joined by '/' ("0.9/0.5")."""
    try:
        return parse_rho(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], or one per stage but the last joined by "
                                         f"'/' (0.9/0.5), got {text!r}") from None


def rho_list(text: str) -> list[Rho]:
    """Comma-separated rho values ("1,0.9,0.9/0.5")."""
    try:
        return [parse_rho(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated rho values (numbers in [0, 1], or one per stage "
                                         f"but the last joined by '/': 1,0.9,0.9/0.5), got {text!r}") from None


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _int_at_least(text: str, low: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def device_name(text: str) -> str:
    """auto, cpu, cuda or cuda:N; CUDA only where this torch has it."""
    import torch

    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "is a CPU build" if torch.version.cuda is None else "sees no GPU"
        raise argparse.ArgumentTypeError(f"CUDA is not available (torch {torch.__version__} {why}); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def set_threads(threads) -> None:
    """--threads: torch's intra-op threads (OMP_NUM_THREADS also works, set before starting)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def default_model() -> str:
    """The zoo model that segment and export use without --model (the zoo's DEFAULT_MODEL)."""
    from ..zoo import DEFAULT_MODEL

    return DEFAULT_MODEL


def load_model(name: str, option: str, **kwargs):
    """from_pretrained, its errors naming the option they came from: ``option`` (the model's name), or
    --rho for a rho that does not fit the model."""
    from ..hub import from_pretrained

    try:
        return from_pretrained(name, **kwargs)
    except (ValueError, RuntimeError, OSError) as e:
        message = str(e).removeprefix("name_or_path: ")
        if message.startswith("rho: ") and kwargs.get("rho") is not None:
            option, message = "--rho", message.removeprefix("rho: ")
        raise ValueError(f"{option}: {message}") from e

"""``sparsecascade list``: the model zoo and the architectures ``create_model`` knows."""
from __future__ import annotations

import argparse

HELP = "the model zoo and the architectures"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    from ..factory import list_models
    from ..zoo import ZOO

    print("pretrained (sparsecascade.from_pretrained):")
    for name in sorted(ZOO):
        e = ZOO[name]
        print(f"  {name:<26} {e.architecture:<14} {e.dataset:<11} {e.repo_id:<38} "
              f"{e.status}")
    print("architectures (sparsecascade.create_model): " + ", ".join(list_models()))
    return 0

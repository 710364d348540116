"""Subcommands that use a model: train, evaluate, predict, export, measure, demo."""
from __future__ import annotations

import argparse
from typing import Any, Callable


def add_commands(sub: Any, layout_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the model subcommands on the ``ultraseg`` parser."""

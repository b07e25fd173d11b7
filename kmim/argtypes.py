"""argparse arguments and value types shared by the commands, and their JSON output."""

from __future__ import annotations

import argparse
import json
from typing import Any


def int_list(text: str) -> list[int]:
    """'8,32,128' -> [8, 32, 128]: at least one positive integer; an argparse error naming the value otherwise."""
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 8,32,128") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one integer >= 1")
    return out


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """-c CONFIG, dotted overrides and -q: how every command that runs on a config takes it."""
    p.add_argument("-c", "--config", help="YAML preset (see configs/); defaults are the mnist5k CPU setting")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5 data.name=imagefolder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))

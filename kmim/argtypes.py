"""argparse value types shared by the commands."""

from __future__ import annotations

import argparse


def int_list(text: str) -> list[int]:
    """'8,32,128' -> [8, 32, 128]: at least one positive integer; an argparse error naming the value otherwise."""
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 8,32,128") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one integer >= 1")
    return out

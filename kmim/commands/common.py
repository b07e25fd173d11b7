"""Arguments and output helpers shared by the commands."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML preset (see configs/); defaults are the mnist5k CPU setting")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5 data.name=imagefolder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))

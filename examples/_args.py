"""CleanRL-style command lines for the examples: one flag per field of an Args dataclass."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def parse_dataclass(cls: type, doc: str | None) -> Any:
    """An instance of dataclass `cls` from the command line (bool fields become switches)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action="store_true")
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=f.default)
    return cls(**vars(parser.parse_args()))

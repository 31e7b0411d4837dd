"""What every command module shares: the stages to call, and how a result is printed."""
from __future__ import annotations

import dataclasses
import json


def emit(result) -> None:
    """Print a command's result as JSON: a typed result, a dict or a list."""
    print(json.dumps(_plain(result), indent=2, default=str))


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def workshop(args):
    """The stages for a command, on this machine's backend."""
    from helpers.connect import connect

    return connect("local", args.state_dir)

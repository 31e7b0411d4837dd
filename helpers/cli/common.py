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
    """The stages for a command, on the backend ``--backend`` names (this machine's by default)."""
    from helpers.connect import connect

    if getattr(args, "backend", "local") == "aws":
        return connect("aws")  # the prefix, region and profile from the environment, as boto3 takes them
    return connect("local", args.state_dir)


def clean_up(target, yes: bool) -> int:
    """What there is, then the clean-up (it asks unless ``yes``), then what is left: exit status 0 when clean.
    ``target``: a Workshop, or a backend."""
    found = target.inventory()
    for resource in found:
        print(f"  {resource.kind:<24} {resource.name}   ({resource.found_by})")
    report = target.clean_up(yes=yes)
    if report.asked:
        print()  # after the question's line (left open when the answer came from a pipe, or none came)
    print(report.summary())
    return 0 if report.clean else 1

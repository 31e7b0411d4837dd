"""The parameter store on AWS: SSM Parameter Store, under the learner's prefix.

The names the code uses are the local ones (``/rtmlops/model-build/wql-threshold``); on AWS each lives under
``/<prefix>/...`` (``/mlops-workshop/model-build/wql-threshold``), so learners sharing an account keep their own.
The model-build stack creates them with their defaults; SSM keeps every version, with who changed it and when.
"""
from __future__ import annotations

import json

from helpers.aws.session import AwsContext, explained
from helpers.training.interface import BASELINE_MARGIN, MODEL_BUILD_DEFAULTS, ParameterNotFound

LOCAL_ROOT = "/rtmlops"
HYPERPARAMETERS = "/rtmlops/model-build/hyperparameters"  # DeepAR's, as JSON: what a retrain trains with
UNSET = "none"  # SSM has no empty values: a parameter the stack creates before it means anything holds this


def ssm_name(prefix: str, name: str) -> str:
    """Where a parameter the code calls ``name`` lives on AWS."""
    if not name.startswith(LOCAL_ROOT + "/"):
        raise ValueError(f"parameter name {name!r}: use one under {LOCAL_ROOT}/, e.g. {BASELINE_MARGIN}")
    return f"/{prefix}{name[len(LOCAL_ROOT):]}"


class SsmParameters:
    """:class:`helpers.training.interface.Parameters` on SSM Parameter Store."""

    def __init__(self, context: AwsContext):
        self.context = context

    @property
    def _ssm(self):
        return self.context.client("ssm")

    def get(self, name: str) -> str:
        from botocore.exceptions import ClientError

        try:
            with explained(f"reading the parameter {ssm_name(self.context.prefix, name)}"):
                value = self._ssm.get_parameter(Name=ssm_name(self.context.prefix, name))["Parameter"]["Value"]
        except ClientError as error:
            if error.response["Error"]["Code"] != "ParameterNotFound":
                raise
            value = UNSET
        if value == UNSET:
            raise ParameterNotFound(f"parameter {ssm_name(self.context.prefix, name)!r} is not set: set it with "
                                    f"`python -m helpers param set {name} VALUE` (or deploy the model-build stack)")
        return value

    def get_float(self, name: str) -> float:
        value = self.get(name)
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"parameter {ssm_name(self.context.prefix, name)!r} is {value!r}, not a number: set it "
                             "to one") from None

    def get_json(self, name: str) -> dict:
        value = self.get(name)
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError(f"parameter {ssm_name(self.context.prefix, name)!r} is not JSON: {value[:80]!r}") from None

    def put(self, name: str, value, by: str = "user", reason: str = "") -> int:
        """Set a new version; SSM records who and when, the description says why. Returns the version."""
        full = ssm_name(self.context.prefix, name)
        with explained(f"setting the parameter {full}"):
            return self._ssm.put_parameter(Name=full, Value=str(value), Type="String", Overwrite=True,
                                           Description=f"{by}: {reason}"[:1024])["Version"]

    def history(self, name: str) -> list[dict]:
        full = ssm_name(self.context.prefix, name)
        with explained(f"reading the history of {full}"):
            pages = self._ssm.get_paginator("get_parameter_history").paginate(Name=full)
            entries = [entry for page in pages for entry in page["Parameters"]]
        return [{"name": name, "version": e["Version"], "value": e["Value"],
                 "modified_at": e["LastModifiedDate"].timestamp(), "modified_by": e.get("LastModifiedUser", ""),
                 "reason": e.get("Description", "")} for e in entries]

    def ensure_model_build_defaults(self) -> dict[str, float]:
        """The quality gate's parameters: the stack created them; one deleted by hand comes back with its default."""
        values = {}
        for name, default in MODEL_BUILD_DEFAULTS.items():
            try:
                values[name] = self.get_float(name)
            except ParameterNotFound:
                self.put(name, default, by="defaults", reason="initial value")
                values[name] = float(default)
        return values

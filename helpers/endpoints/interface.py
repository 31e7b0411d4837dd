"""What notebooks 04 and 05, the retrain and the CLI ask of the endpoints, whichever backend serves them.

Invocation goes through a ``sagemaker-runtime`` client on both backends (the local endpoints speak InvokeEndpoint);
the version an endpoint serves is read from its description, as SageMaker keeps it in the endpoint's
configuration, and each version is its own production variant (:func:`variant_name`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypedDict

import pandas as pd

from helpers.core.policies import SmokeTest, ThresholdChange

ENDPOINTS = ("staging", "prod")
VARIANT_PREFIX = "model-v"


def variant_name(model_version: int) -> str:
    """The production variant that serves a model version: InvokeEndpoint names it in every answer."""
    return f"{VARIANT_PREFIX}{model_version}"


def variant_version(variant: str) -> int | None:
    """The model version a production variant serves (None for a variant not named by :func:`variant_name`)."""
    number = variant.removeprefix(VARIANT_PREFIX)
    return int(number) if variant.startswith(VARIANT_PREFIX) and number.isdigit() else None


def served_version(description: dict | None) -> int | None:
    """The model version an endpoint serves: its production variant ``model-vN`` with the most traffic."""
    variants = (description or {}).get("ProductionVariants", [])
    ranked = sorted((v for v in variants if variant_version(v["VariantName"]) is not None),
                    key=lambda v: (v.get("CurrentWeight", 0), variant_version(v["VariantName"])), reverse=True)
    return variant_version(ranked[0]["VariantName"]) if ranked else None


class EndpointDescription(TypedDict, total=False):
    """DescribeEndpoint's answer, with the version the endpoint's configuration serves."""

    EndpointName: str
    EndpointStatus: str  # Creating, InService, Updating, Failed; OutOfService when nothing runs
    ModelVersion: int | None
    PreviousModelVersion: int | None
    InServiceSince: str | None
    LastModifiedTime: str | None
    FailureReason: str | None


class PromotionError(RuntimeError):
    """An endpoint refused a version; the message says which condition failed and what to do."""


@dataclass(frozen=True)
class Approval:
    """What approving a version did: the threshold rule, the deploy to staging and its smoke test."""

    model_version: int
    threshold: ThresholdChange
    staging: EndpointDescription
    smoke_test: SmokeTest


@dataclass(frozen=True)
class Invocation:
    """An InvokeEndpoint answer, parsed."""

    endpoint: str
    content_type: str
    variant: str  # the production variant that answered: variant_name(model_version)
    predictions: list[dict]  # DeepAR's JSON: mean, quantiles {"0.1": [...], ...}, samples


class Endpoints(Protocol):
    names: tuple[str, ...]

    def approve(self, version: int | None = None, by: str = "", reason: str = "",
                update_rate: float = 0.5) -> Approval:
        """Approve a version: the threshold rule, then deploy it to staging and smoke-test it there."""

    def reject(self, version: int | None = None, by: str = "", reason: str = "") -> str:
        """Reject a version; returns its approval status."""

    def promote(self, version: int | None = None, by: str = "", reason: str = "") -> EndpointDescription:
        """The second approval: production takes the version staging serves, through the promotion guard."""

    def deploy(self, name: str, version: int, by: str = "", reason: str = "") -> EndpointDescription: ...

    def rollback(self, name: str, by: str = "", reason: str = "") -> EndpointDescription: ...

    def describe(self, name: str) -> EndpointDescription: ...

    def require_in_service(self) -> dict[str, EndpointDescription]:
        """Both endpoints' descriptions; if either is not InService, a ValueError that says what to run."""

    def smoke_test(self, name: str = "staging") -> SmokeTest: ...

    def invoke(self, name: str, request: dict) -> Invocation:
        """InvokeEndpoint with a DeepAR JSON request; a refused request raises ValueError with the endpoint's
        message (the field and the fix)."""

    def runtime_client(self):
        """A boto3 ``sagemaker-runtime`` client that reaches these endpoints."""

    def history(self) -> pd.DataFrame:
        """Every deploy and rollback: endpoint, version, action, status, who, why, when."""

    def stop(self) -> None: ...

"""The model registry stage: registered versions and their approval status (``interface``), MLflow on this
machine (``local``, imported on first use), a SageMaker model package group on AWS."""
from helpers.registry.interface import APPROVAL_STATUSES, MODEL_GROUP, ModelVersion

__all__ = ["APPROVAL_STATUSES", "MODEL_GROUP", "ModelRegistry", "ModelVersion"]


def __getattr__(name: str):
    if name == "ModelRegistry":
        from helpers.registry.local import ModelRegistry

        return ModelRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

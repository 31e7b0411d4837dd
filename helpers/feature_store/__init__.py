"""The feature store stage: the feature group's definition (pure), what the stages ask of it (``interface``), and
the local twin of SageMaker Feature Store (``store``: SQLite online, Parquet + DuckDB offline; ``quality``).

The local store is imported on first use, so that importing the definition or the interface (as the AWS twin and
the Lambdas do) loads no DuckDB.
"""
from helpers.core.feature_definition import (
    TX_PER_MINUTE,
    FeatureDefinition,
    FeatureGroupDefinition,
    FeatureStoreError,
)
from helpers.feature_store.interface import TrainingDataset

__all__ = ["TX_PER_MINUTE", "FeatureDefinition", "FeatureGroup", "FeatureGroupDefinition", "FeatureStore",
           "FeatureStoreError", "TrainingDataset", "open_tx_per_minute"]


def __getattr__(name: str):
    if name in ("FeatureGroup", "FeatureStore"):
        from helpers.feature_store import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_tx_per_minute(root):
    """The per-minute transaction feature group under ``root``, created on first use."""
    from helpers.feature_store.store import FeatureStore

    return FeatureStore(root).create_feature_group(TX_PER_MINUTE)

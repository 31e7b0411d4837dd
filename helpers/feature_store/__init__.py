"""The local twin of SageMaker Feature Store: definitions, online and offline stores, data quality."""
from helpers.feature_store.definition import (
    TX_PER_MINUTE,
    FeatureDefinition,
    FeatureGroupDefinition,
    FeatureStoreError,
)
from helpers.feature_store.store import FeatureGroup, FeatureStore, TrainingDataset

__all__ = ["TX_PER_MINUTE", "FeatureDefinition", "FeatureGroup", "FeatureGroupDefinition", "FeatureStore",
           "FeatureStoreError", "TrainingDataset", "open_tx_per_minute"]


def open_tx_per_minute(root) -> FeatureGroup:
    """The per-minute transaction feature group under ``root``, created on first use."""
    return FeatureStore(root).create_feature_group(TX_PER_MINUTE)

"""Feature group definitions, as SageMaker Feature Store defines them, shared by both backends.

A definition names the record identifier, the event-time feature and every
feature with a SageMaker type (Integral, Fractional, String). The local store
is created from it, and :meth:`FeatureGroupDefinition.create_request` turns the
same definition into SageMaker's CreateFeatureGroup request.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

FEATURE_TYPES = ("Integral", "Fractional", "String")
OFFLINE_TABLE_FORMATS = ("Glue", "Iceberg")
_NAME = re.compile(r"^[a-zA-Z0-9]([_-]*[a-zA-Z0-9]){0,63}$")  # SageMaker's feature group name rule
# Columns the offline store adds to every row, as SageMaker's does.
SYSTEM_COLUMNS = (("write_time", "float64"), ("api_invocation_time", "float64"), ("is_deleted", "bool_"))
_ARROW_TYPES = {"Integral": "int64", "Fractional": "float64", "String": "string"}


class FeatureStoreError(ValueError):
    """Bad input to the feature store. The message names the field and how to fix it."""


@dataclass(frozen=True)
class FeatureDefinition:
    name: str
    type: str

    def __post_init__(self):
        if self.type not in FEATURE_TYPES:
            raise FeatureStoreError(f"feature {self.name!r}: type {self.type!r} is not one of {FEATURE_TYPES}")


@dataclass(frozen=True)
class FeatureGroupDefinition:
    name: str
    record_identifier: str
    event_time_feature: str
    features: tuple[FeatureDefinition, ...]
    description: str = ""
    # For a time series group: (feature holding each record's slot start in unix s, slot length in s).
    grid: tuple[str, int] | None = None
    tags: dict = field(default_factory=dict)

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise FeatureStoreError(f"feature group name {self.name!r}: use 1-64 letters, digits, '-' or '_'")
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise FeatureStoreError(f"feature group {self.name!r}: feature names repeat in {names}")
        for role, name in (("record_identifier", self.record_identifier),
                           ("event_time_feature", self.event_time_feature), ("grid", self.grid and self.grid[0])):
            if name is not None and name not in names:
                raise FeatureStoreError(f"feature group {self.name!r}: {role} {name!r} is not among its features")
        if self.types[self.event_time_feature] not in ("Fractional", "String"):
            raise FeatureStoreError(f"{self.event_time_feature!r}: an event-time feature is Fractional or String")

    @property
    def types(self) -> dict[str, str]:
        return {f.name: f.type for f in self.features}

    @property
    def athena_table_stem(self) -> str:
        return self.name.replace("-", "_").lower()

    def arrow_schema(self):
        """The offline store's Parquet schema: the features, then SageMaker's system columns.

        pyarrow is imported here, not at the top: the AWS Lambdas use this module and ship without it."""
        import pyarrow as pa

        return pa.schema([pa.field(f.name, getattr(pa, _ARROW_TYPES[f.type])()) for f in self.features]
                         + [pa.field(name, getattr(pa, kind)()) for name, kind in SYSTEM_COLUMNS])

    def check_feature_names(self, names) -> list[str]:
        unknown = [n for n in names if n not in self.types]
        if unknown:
            raise FeatureStoreError(f"unknown feature {unknown[0]!r} for feature group {self.name!r}: "
                                    f"its features are {list(self.types)}")
        return list(names)

    def validate_record(self, record) -> dict:
        """The record with every feature (missing optional ones as None), or a FeatureStoreError saying why not."""
        if not isinstance(record, dict):
            raise FeatureStoreError(f"a record is a dict of feature name to value, not {type(record).__name__}")
        self.check_feature_names(record)
        for required in (self.record_identifier, self.event_time_feature):
            if record.get(required) is None:
                raise FeatureStoreError(f"record is missing {required!r}, which feature group {self.name!r} requires")
        return {name: _checked(name, kind, record.get(name)) for name, kind in self.types.items()}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureGroupDefinition":
        features = tuple(FeatureDefinition(**f) for f in data["features"])
        grid = tuple(data["grid"]) if data.get("grid") else None
        return cls(**{**data, "features": features, "grid": grid})

    def create_request(self, s3_uri: str, role_arn: str, table_format: str = "Glue", kms_key_id: str | None = None,
                       tags: dict | None = None) -> dict:
        """SageMaker CreateFeatureGroup arguments for this definition (online + offline store)."""
        if table_format not in OFFLINE_TABLE_FORMATS:
            raise FeatureStoreError(f"table_format={table_format!r}: use one of {OFFLINE_TABLE_FORMATS}")
        offline = {"S3StorageConfig": {"S3Uri": s3_uri, **({"KmsKeyId": kms_key_id} if kms_key_id else {})},
                   "DisableGlueTableCreation": False, "TableFormat": table_format}
        online = {"EnableOnlineStore": True, **({"SecurityConfig": {"KmsKeyId": kms_key_id}} if kms_key_id else {})}
        return {
            "FeatureGroupName": self.name,
            "RecordIdentifierFeatureName": self.record_identifier,
            "EventTimeFeatureName": self.event_time_feature,
            "FeatureDefinitions": [{"FeatureName": f.name, "FeatureType": f.type} for f in self.features],
            "OnlineStoreConfig": online,
            "OfflineStoreConfig": offline,
            "RoleArn": role_arn,
            "Description": self.description,
            "Tags": [{"Key": k, "Value": v} for k, v in {**self.tags, **(tags or {})}.items()],
        }


def _checked(name: str, kind: str, value):
    if value is None:
        return None
    if kind == "String":
        if not isinstance(value, str):
            raise FeatureStoreError(f"feature {name!r} is a String: got {type(value).__name__} {value!r}")
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise FeatureStoreError(f"feature {name!r} is {kind}: got {type(value).__name__} {value!r}; pass a number")
    if kind == "Integral":
        if isinstance(value, (float, np.floating)):
            raise FeatureStoreError(f"feature {name!r} is Integral: got the float {value!r}; pass an int")
        return int(value)
    if not math.isfinite(value):
        raise FeatureStoreError(f"feature {name!r} is Fractional: got {value!r}; pass a finite number or None")
    return float(value)


TX_PER_MINUTE = FeatureGroupDefinition(
    name="btc-tx-per-minute",
    record_identifier="tx_minute",
    event_time_feature="event_time",
    features=(
        FeatureDefinition("tx_minute", "String"),  # ISO-8601 UTC minute, e.g. 2026-11-22T13:05:00Z
        FeatureDefinition("window_start", "Fractional"),  # unix seconds of the minute's start
        FeatureDefinition("event_time", "Fractional"),  # watermark when this revision was emitted (unix s)
        FeatureDefinition("revision", "Integral"),  # 0 when the minute closed, +1 per late update
        FeatureDefinition("tx_count", "Integral"),
        FeatureDefinition("total_fee", "Integral"),  # satoshi
        FeatureDefinition("avg_fee", "Fractional"),  # satoshi per transaction, never truncated
        FeatureDefinition("total_vsize", "Integral"),  # vbytes
        FeatureDefinition("avg_fee_rate", "Fractional"),  # sat/vB: total_fee / total_vsize
        FeatureDefinition("min_fee", "Integral"),
        FeatureDefinition("max_fee", "Integral"),
    ),
    description="Bitcoin mempool transactions aggregated per minute of event time",
    grid=("window_start", 60),
)

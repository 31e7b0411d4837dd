"""The AWS twin of the feature group: SageMaker Feature Store, online (GetRecord) and offline (Athena).

The group is created from the same definition as the local store (:data:`TX_PER_MINUTE`'s ``create_request``),
named after the workshop's prefix. Its offline store is Iceberg: Feature Store writes many small Parquet files
(one per few records), and an Iceberg table compacts with Athena's ``OPTIMIZE ... BIN_PACK`` and ``VACUUM``,
where a Glue-format table would need a Glue job. Reads are written once, in
:class:`~helpers.feature_store.queries.FeatureGroupQueries`: the same SQL runs here on Athena as on DuckDB locally.
"""
from __future__ import annotations

import time
from dataclasses import replace
from functools import cached_property

import pandas as pd

from helpers.aws.session import AwsContext, AwsSetupError, explained
from helpers.core.feature_definition import TX_PER_MINUTE, FeatureStoreError
from helpers.core.times import minute_iso
from helpers.feature_store.queries import FeatureGroupQueries
from helpers.feature_store.writer import from_feature_store_record, to_feature_store_record

OFFLINE_TABLE_FORMAT = "Iceberg"
ATHENA_TYPES = {"bigint": "Int64", "integer": "Int64", "double": "float64", "float": "float64", "boolean": "boolean"}
BATCH_GET_LIMIT = 100  # BatchGetRecord's identifiers per call
NOT_FOUND = ("ResourceNotFound", "ResourceNotFoundException", "ValidationException")


class AwsFeatureGroup(FeatureGroupQueries):
    def __init__(self, context: AwsContext, outputs: dict[str, str], clock=time.time, poll_s: float = 2.0):
        self.context = context
        self.outputs = outputs
        self.definition = replace(TX_PER_MINUTE, name=outputs["FeatureGroupName"])
        self.name = self.definition.name
        self.clock = clock
        self.poll_s = poll_s

    # ------------------------------------------------------------ the group

    def create_request(self) -> dict:
        return self.definition.create_request(self.outputs["OfflineStoreS3Uri"], self.outputs["FeatureStoreRoleArn"],
                                              table_format=OFFLINE_TABLE_FORMAT,
                                              kms_key_id=self.outputs.get("KmsKeyArn"),
                                              tags={t["Key"]: t["Value"] for t in self.context.tags})

    def ensure(self, timeout_s: float = 600) -> "AwsFeatureGroup":
        """Create the group if it does not exist, and wait until it is Created."""
        from botocore.exceptions import ClientError

        try:  # create first, rather than describe first: two notebooks starting at once cannot both create it
            with explained(f"creating the feature group {self.name}"):
                self.context.client("sagemaker").create_feature_group(**self.create_request())
        except ClientError as error:
            if error.response["Error"]["Code"] != "ResourceInUse":
                raise
        deadline = self.clock() + timeout_s
        while self._describe_raw()["FeatureGroupStatus"] == "Creating" and self.clock() < deadline:
            time.sleep(self.poll_s)
        self.describe()  # raises with what to do unless Created
        return self

    def _describe_raw(self) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            with explained(f"describing the feature group {self.name}"):
                return self.context.client("sagemaker").describe_feature_group(FeatureGroupName=self.name)
        except ClientError as error:
            if error.response["Error"]["Code"] in NOT_FOUND:
                return None
            raise

    def describe(self) -> dict:
        found = self._describe_raw()
        if found is None:
            raise AwsSetupError(f"feature group {self.name} does not exist: run notebook 01 with backend='aws', "
                                "which creates it")
        status = found["FeatureGroupStatus"]
        if status == "Creating":
            raise AwsSetupError(f"feature group {self.name} is still Creating (it takes a few minutes): wait a "
                                "minute and run the cell again")
        if status != "Created":
            raise AwsSetupError(f"feature group {self.name} is {status}: {found.get('FailureReason', 'no reason')}."
                                " Delete it (clean-up) and run notebook 01 again")
        return found

    @cached_property
    def table_name(self) -> str:
        return self.describe()["OfflineStoreConfig"]["DataCatalogConfig"]["TableName"]

    @cached_property
    def database(self) -> str:
        return self.describe()["OfflineStoreConfig"]["DataCatalogConfig"]["Database"]

    # ------------------------------------------------------------ writes

    def put_record(self, record: dict) -> None:
        """PutRecord with the record's own event time: the online store keeps the latest, the offline store all."""
        with explained(f"writing to the feature group {self.name}"):
            self.context.client("sagemaker-featurestore-runtime").put_record(
                FeatureGroupName=self.name, Record=to_feature_store_record(record))

    # ------------------------------------------------------------ online reads

    def get_record(self, record_id: str, feature_names: list[str] | None = None) -> dict | None:
        if not isinstance(record_id, str):
            raise FeatureStoreError(f"record_id={record_id!r}: the record identifier "
                                    f"{self.definition.record_identifier!r} is a string")
        names = self.definition.check_feature_names(feature_names) if feature_names is not None else None
        request = {"FeatureGroupName": self.name, "RecordIdentifierValueAsString": record_id}
        if names:
            request["FeatureNames"] = names
        with explained(f"reading {record_id} from the feature group {self.name}"):
            found = self.context.client("sagemaker-featurestore-runtime").get_record(**request).get("Record")
        return from_feature_store_record(found) if found else None

    def latest_online(self, n: int = 1, lookback_minutes: int = 180) -> list[dict]:
        """The ``n`` newest minutes the online store holds, newest first, found by BatchGetRecord over the
        minutes before now (the online store has no scan)."""
        newest = int(self.clock()) // 60 * 60
        ids = [minute_iso(newest - 60 * i) for i in range(lookback_minutes)]
        found = []
        runtime = self.context.client("sagemaker-featurestore-runtime")
        for start in range(0, len(ids), BATCH_GET_LIMIT):
            chunk = ids[start:start + BATCH_GET_LIMIT]
            with explained(f"reading the newest minutes of {self.name}"):
                answer = runtime.batch_get_record(Identifiers=[{"FeatureGroupName": self.name,
                                                                "RecordIdentifiersValueAsString": chunk}])
            found += [from_feature_store_record(r["Record"]) for r in answer.get("Records", [])]
            if len(found) >= n:
                break
        return sorted(found, key=lambda r: r["window_start"], reverse=True)[:n]

    def recent(self, feature: str, slots: int) -> pd.Series:
        """One feature over the newest ``slots`` minutes, from the online store (the offline store lags up to 15
        minutes behind it): what an endpoint is sent, and what the smoke test holds out. Gaps are NaN."""
        self.definition.check_feature_names([feature])
        newest = self.newest_slot()
        if newest is None:
            raise FeatureStoreError("the feature store is empty: start the stream first (notebook 01 or "
                                    "python -m helpers start)")
        minutes = pd.date_range(end=newest, periods=slots, freq="min")
        ids = [minute_iso(m.timestamp()) for m in minutes]
        runtime, values = self.context.client("sagemaker-featurestore-runtime"), {}
        for start in range(0, len(ids), BATCH_GET_LIMIT):
            with explained(f"reading the newest {slots} minutes of {self.name}"):
                answer = runtime.batch_get_record(Identifiers=[{"FeatureGroupName": self.name,
                                                                "RecordIdentifiersValueAsString":
                                                                    ids[start:start + BATCH_GET_LIMIT]}])
            for found in answer.get("Records", []):
                record = from_feature_store_record(found["Record"])
                values[record[self.definition.record_identifier]] = record[feature]
        return pd.Series([values.get(i, float("nan")) for i in ids], index=minutes.rename(self._grid()[0]),
                         name=feature, dtype=float)

    # ------------------------------------------------------------ offline reads (Athena)

    def sql(self, query: str, params: list | None = None) -> pd.DataFrame:
        athena = self.context.client("athena")
        request = {"QueryString": query, "WorkGroup": self.outputs["AthenaWorkGroup"],
                   "QueryExecutionContext": {"Database": self.database}}
        if params:
            request["ExecutionParameters"] = [_literal(value) for value in params]
        with explained("querying the offline store with Athena"):
            query_id = athena.start_query_execution(**request)["QueryExecutionId"]
            state = self._wait_for_query(athena, query_id)
            if state["State"] != "SUCCEEDED":
                raise FeatureStoreError(f"Athena query {state['State']}: {state.get('StateChangeReason', '')}. The "
                                        f"offline table is {self.table_name!r} in {self.database!r}")
            return _results_frame(athena, query_id)

    def _wait_for_query(self, athena, query_id: str) -> dict:
        while True:
            status = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"]
            if status["State"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                return status
            time.sleep(self.poll_s)

    def offline_stats(self) -> dict:
        row = self.sql(f'SELECT COUNT(*) AS "rows", COUNT(DISTINCT "{self.definition.record_identifier}") AS records '
                       f'FROM "{self.table_name}"').iloc[0]
        return {"rows": int(row["rows"]), "records": int(row["records"]), "table": f"{self.database}.{self.table_name}"}

    def compact(self) -> dict:
        """Iceberg compaction on Athena: merge small files, then drop the replaced ones."""
        self.sql(f'OPTIMIZE "{self.table_name}" REWRITE DATA USING BIN_PACK')
        self.sql(f'VACUUM "{self.table_name}"')
        return {"optimized": self.table_name, **self.offline_stats()}

    def close(self) -> None:
        """Nothing to close: every call is a request."""


def _literal(value) -> str:
    """An Athena execution parameter: numbers as they are, strings quoted."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _results_frame(athena, query_id: str) -> pd.DataFrame:
    """GetQueryResults' pages as a typed DataFrame (Athena returns every value as a string)."""
    rows, columns = [], None
    for page in athena.get_paginator("get_query_results").paginate(QueryExecutionId=query_id):
        result = page["ResultSet"]
        if columns is None:
            columns = [(c["Name"], c["Type"]) for c in result["ResultSetMetadata"]["ColumnInfo"]]
            data = result["Rows"][1:]  # the first page's first row is the header
        else:
            data = result["Rows"]
        rows += [[cell.get("VarCharValue") for cell in row["Data"]] for row in data]
    frame = pd.DataFrame(rows, columns=[name for name, _ in columns or []])
    for name, kind in columns or []:
        if kind in ATHENA_TYPES:
            frame[name] = pd.to_numeric(frame[name]) if kind != "boolean" else frame[name].map(
                {"true": True, "false": False})
            frame[name] = frame[name].astype(ATHENA_TYPES[kind])
    return frame

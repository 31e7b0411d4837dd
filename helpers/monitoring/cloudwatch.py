"""CloudWatch's shapes, as both twins of the monitor use them: the namespace and metric names, the dimensions, and an
alarm's settings with the PutMetricAlarm request they make.

Pure (no SQLite, no boto3): the local twin of CloudWatch (:mod:`helpers.monitoring.alarms`) keeps datapoints and
alarms with these settings and evaluates them by CloudWatch's rule; the AWS twin (:mod:`helpers.monitoring.aws`)
sends :meth:`AlarmSettings.metric_alarm_request` to CloudWatch itself.
"""
from __future__ import annotations

import operator
import statistics
from dataclasses import dataclass

NAMESPACE = "CustomModelMonitoring"
WQL_METRIC = "weighted_quantile_loss"
THRESHOLD_METRIC = "weighted_quantile_loss_threshold"

OK, ALARM, INSUFFICIENT_DATA = "OK", "ALARM", "INSUFFICIENT_DATA"
COMPARISONS = {"GreaterThanOrEqualToThreshold": operator.ge, "GreaterThanThreshold": operator.gt,
               "LessThanThreshold": operator.lt, "LessThanOrEqualToThreshold": operator.le}
STATISTICS = {"Maximum": max, "Minimum": min, "Average": statistics.fmean, "Sum": sum, "SampleCount": len}
MISSING_DATA = ("notBreaching", "breaching", "ignore")


def metric_dimensions(stage: str, model_version: int | None = None) -> dict[str, str]:
    """A stage's datapoints carry ``StageName``; those of a period one version served alone also ``ModelVersion``."""
    return {"StageName": stage, **({"ModelVersion": str(model_version)} if model_version is not None else {})}


@dataclass(frozen=True)
class AlarmSettings:
    """PutMetricAlarm's settings. With ``threshold_metric``, the alarm is on metric math: ``metric_name -
    threshold_metric`` (the threshold published beside each datapoint) compared with ``threshold`` (0), so that the
    rule holds as a CloudWatch alarm, which cannot read a parameter store."""

    name: str
    dimensions: dict
    metric_name: str = WQL_METRIC
    namespace: str = NAMESPACE
    statistic: str = "Maximum"
    period: int = 3600
    evaluation_periods: int = 3
    datapoints_to_alarm: int = 3
    comparison: str = "GreaterThanOrEqualToThreshold"
    treat_missing_data: str = "notBreaching"
    threshold: float = 0.0
    threshold_metric: str | None = THRESHOLD_METRIC

    def __post_init__(self):
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic={self.statistic!r}: use one of {sorted(STATISTICS)}")
        if self.comparison not in COMPARISONS:
            raise ValueError(f"comparison={self.comparison!r}: use one of {sorted(COMPARISONS)}")
        if self.treat_missing_data not in MISSING_DATA:
            raise ValueError(f"treat_missing_data={self.treat_missing_data!r}: use one of {MISSING_DATA}")
        if self.period < 60 or self.period % 60:
            raise ValueError(f"period={self.period}: use a multiple of 60 seconds")
        if not 1 <= self.datapoints_to_alarm <= self.evaluation_periods:
            raise ValueError(f"datapoints_to_alarm={self.datapoints_to_alarm}: must be 1..evaluation_periods "
                             f"({self.evaluation_periods})")
        if self.evaluation_periods * self.period > 86400:
            raise ValueError("evaluation_periods x period must not exceed one day (CloudWatch's limit)")

    @property
    def label(self) -> str:
        """What the alarm compares with its threshold."""
        return f"{self.metric_name} - {self.threshold_metric}" if self.threshold_metric else self.metric_name

    def metric_alarm_request(self) -> dict:
        """CloudWatch PutMetricAlarm's arguments for these settings: what the AWS twin creates."""
        def metric(query_id: str, name: str) -> dict:
            return {"Id": query_id, "ReturnData": False, "MetricStat": {
                "Metric": {"Namespace": self.namespace, "MetricName": name,
                           "Dimensions": [{"Name": k, "Value": str(v)} for k, v in self.dimensions.items()]},
                "Period": self.period, "Stat": self.statistic}}
        request = {"AlarmName": self.name, "EvaluationPeriods": self.evaluation_periods,
                   "DatapointsToAlarm": self.datapoints_to_alarm, "Threshold": self.threshold,
                   "ComparisonOperator": self.comparison, "TreatMissingData": self.treat_missing_data}
        if self.threshold_metric is None:
            return {**request, "Namespace": self.namespace, "MetricName": self.metric_name, "Period": self.period,
                    "Statistic": self.statistic,
                    "Dimensions": [{"Name": k, "Value": str(v)} for k, v in self.dimensions.items()]}
        return {**request, "Metrics": [metric("score", self.metric_name), metric("bar", self.threshold_metric),
                                       {"Id": "excess", "Expression": "score - bar", "Label": self.label,
                                        "ReturnData": True}]}

    @property
    def evaluation_range(self) -> int:
        """How many periods an evaluation reads: more than N, as CloudWatch does (its documented example: 5 for 3)."""
        return self.evaluation_periods + 2


def stage_alarm(name: str, stage: str, model_version: int | None, evaluation_periods: int, datapoints_to_alarm: int,
                period: int = 3600) -> AlarmSettings:
    """A stage's alarm, on the version it serves: a deploy moves the alarm to the new version's metrics, so a fresh
    model is judged on the periods it served alone (the others are missing data, not breaching)."""
    return AlarmSettings(name, metric_dimensions(stage, model_version), period=period,
                         evaluation_periods=evaluation_periods, datapoints_to_alarm=datapoints_to_alarm)

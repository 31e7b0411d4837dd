"""The alarm rule, row by row from CloudWatch's documentation, and the metric store's idempotence."""
import pytest

from helpers.monitoring import alarms
from helpers.monitoring.alarms import ALARM, INSUFFICIENT_DATA, OK, AlarmSettings


def _points(pattern: str) -> list[float | None]:
    """CloudWatch's notation, oldest first: 0 not breaching, X breaching, - missing (threshold 1)."""
    return [{"0": 0.5, "X": 2.0, "-": None}[c] for c in pattern.split()]


# CloudWatch's tables ("How alarm state is evaluated when data is missing"); the state before is OK unless given.
THREE_OF_THREE = [
    ("0 - X - X", {"notBreaching": OK, "breaching": OK, "ignore": OK}),
    ("0 - - - -", {"notBreaching": OK, "breaching": OK, "ignore": OK}),
    ("- - - - -", {"notBreaching": OK, "breaching": ALARM, "ignore": "kept"}),
    ("0 X X - X", {"notBreaching": ALARM, "breaching": ALARM, "ignore": ALARM}),
    ("- - - - X", {"notBreaching": OK, "breaching": ALARM, "ignore": "kept"}),
    ("X - - - -", {"notBreaching": OK, "breaching": ALARM, "ignore": "kept"}),
    # and the everyday cases of the monitor's alarm
    ("0 0 X X X", {"notBreaching": ALARM, "breaching": ALARM, "ignore": ALARM}),
    ("X X X X 0", {"notBreaching": OK, "breaching": OK, "ignore": OK}),
    ("- - X X X", {"notBreaching": ALARM, "breaching": ALARM, "ignore": ALARM}),
    ("- - - X X", {"notBreaching": OK, "breaching": ALARM, "ignore": "kept"}),
]
TWO_OF_THREE = [
    ("0 - X - X", {"notBreaching": ALARM, "breaching": ALARM, "ignore": ALARM}),
    ("0 0 X 0 X", {"notBreaching": ALARM, "breaching": ALARM, "ignore": ALARM}),
    ("0 - X - -", {"notBreaching": OK, "breaching": ALARM, "ignore": OK}),
    ("- - - - 0", {"notBreaching": OK, "breaching": ALARM, "ignore": OK}),
    ("- - - - X", {"notBreaching": OK, "breaching": ALARM, "ignore": "kept"}),
]


@pytest.mark.parametrize("datapoints_to_alarm, pattern, expected", [(3, p, e) for p, e in THREE_OF_THREE]
                         + [(2, p, e) for p, e in TWO_OF_THREE])
@pytest.mark.parametrize("treatment", alarms.MISSING_DATA)
@pytest.mark.parametrize("before", [OK, ALARM, INSUFFICIENT_DATA])
def test_alarm_rule_matches_cloudwatch(datapoints_to_alarm, pattern, expected, treatment, before):
    settings = AlarmSettings("a", {"StageName": "prod"}, datapoints_to_alarm=datapoints_to_alarm,
                             treat_missing_data=treatment)
    state, reason = alarms.evaluate(_points(pattern), 1.0, settings, before)
    assert state == (before if expected[treatment] == "kept" else expected[treatment]), reason


@pytest.mark.parametrize("comparison, value, breaching", [
    ("GreaterThanOrEqualToThreshold", 1.0, True), ("GreaterThanOrEqualToThreshold", 0.99, False),
    ("GreaterThanThreshold", 1.0, False), ("LessThanThreshold", 0.99, True), ("LessThanOrEqualToThreshold", 1.0, True),
])
def test_comparison_operators(comparison, value, breaching):
    settings = AlarmSettings("a", {}, evaluation_periods=1, datapoints_to_alarm=1, comparison=comparison)
    assert alarms.evaluate([None, None, value], 1.0, settings, OK)[0] == (ALARM if breaching else OK)


def test_the_monitor_alarm_defaults_are_the_original_systems():
    settings = AlarmSettings("a", {"StageName": "prod"})
    assert (settings.statistic, settings.period, settings.evaluation_periods, settings.datapoints_to_alarm,
            settings.comparison, settings.treat_missing_data) == (
        "Maximum", 3600, 3, 3, "GreaterThanOrEqualToThreshold", "notBreaching")
    assert settings.evaluation_range == 5


@pytest.mark.parametrize("field, value, message", [
    ("datapoints_to_alarm", 4, "datapoints_to_alarm=4"), ("statistic", "p99", "statistic='p99'"),
    ("treat_missing_data", "missing", "treat_missing_data='missing'"), ("period", 90, "period=90"),
    ("evaluation_periods", 30, "one day"),
])
def test_bad_settings_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        AlarmSettings("a", {}, **{field: value})


def test_history_records_transitions_only(tmp_path):
    _, store = alarms.open_stores(tmp_path)
    store.put_alarm(AlarmSettings("a", {}), at=0)
    assert store.describe("a")["StateValue"] == INSUFFICIENT_DATA
    for hour, state in enumerate([OK, OK, ALARM, ALARM, OK]):
        store.record("a", 3600 * (hour + 1), state, f"hour {hour}", threshold=0.2)
    history = store.history()
    assert list(zip(history["old_state"], history["new_state"])) == [
        (INSUFFICIENT_DATA, OK), (OK, ALARM), (ALARM, OK)]
    store.put_alarm(AlarmSettings("a", {}, datapoints_to_alarm=2), at=0)  # new settings keep the state
    assert store.describe("a")["StateValue"] == OK and store.settings("a").datapoints_to_alarm == 2


def test_a_metric_is_published_once_per_timestamp(tmp_path):
    metrics, _ = alarms.open_stores(tmp_path)
    datum = {"MetricName": "m", "Dimensions": [{"Name": "StageName", "Value": "prod"}], "Timestamp": 7200,
             "Value": 0.3}
    assert metrics.put_metric_data("ns", [datum]) == 1
    assert metrics.put_metric_data("ns", [{**datum, "Value": 0.9}]) == 0  # a re-run of the hour changes nothing
    assert metrics.put_metric_data("ns", [{**datum, "Timestamp": 10800, "Value": 0.1}]) == 1
    assert metrics.statistics("ns", "m", {"StageName": "prod"}, 0, 14400, 3600, "Maximum") == {7200: 0.3,
                                                                                              10800: 0.1}
    assert metrics.statistics("ns", "m", {"StageName": "staging"}, 0, 14400, 3600, "Maximum") == {}

"""Stage 5, monitoring: each endpoint scored hourly on its own forecasts, its alarm, and the retrain it starts.

``interface`` is what notebook 05 and the CLI ask; ``local`` runs them on this machine: ``monitor`` (scoring, the
monitor service), ``alarms`` (the CloudWatch twin), ``retrain`` (the alarm action) and ``monitor_config``. The AWS
twin, ``aws`` (a scoring Lambda per stage on a schedule, CloudWatch alarms, a retrain Lambda), sits beside them. Both
run the pure ``scoring`` (a capture's forecasts, a period's wQL and datapoints), ``cloudwatch`` (the metric names
and the alarm's request) and ``settings``.
"""

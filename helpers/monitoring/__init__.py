"""Stage 5, monitoring: each endpoint scored hourly on its own forecasts, its alarm, and the retrain an alarm starts.

``interface`` is what notebook 05 and the CLI ask; ``local`` runs :mod:`helpers.monitor` (scoring, the alarms'
CloudWatch twin) and :mod:`helpers.retrain` on this machine. The AWS twin (a scheduled scoring job, CloudWatch
alarms, a retrain Lambda) sits beside it.
"""

"""Stage 3, model build: the quality gate's parameters, the pipeline (extract, prepare, train, forecast, evaluate,
gate, register) and what a build reports.

``interface`` is what notebook 03, the retrain and the CLI ask; ``local`` runs it on this machine: ``model_build``
(the steps), ``pipeline`` (the runner and its records), ``deepar`` (GluonTS) and ``params`` (the parameter store).
The AWS twin (a SageMaker Pipeline) sits beside them.
"""

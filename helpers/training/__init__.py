"""Stage 3, model build: the quality gate's parameters, the pipeline (extract, prepare, train, forecast, evaluate,
gate, register) and what a build reports.

``interface`` is what notebook 03, the retrain and the CLI ask; ``local`` runs the pipeline of
:mod:`helpers.model_build` on this machine. The AWS twin (a SageMaker Pipeline) sits beside it.
"""

"""Stage 4, endpoints: approval, staging and production, invocation, the deployment history.

``interface`` is what notebooks 04 and 05, the retrain and the CLI ask; ``local`` drives the endpoint processes of
:mod:`helpers.deploy` and :mod:`helpers.serving` on this machine. The AWS twin (SageMaker endpoints) sits beside it.
"""

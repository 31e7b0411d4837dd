"""Stage 4, endpoints: approval, staging and production, invocation, the deployment history.

``interface`` is what notebooks 04 and 05, the retrain and the CLI ask; ``local`` drives the endpoint processes
on this machine: ``deploy`` (approval, deploys, the promotion guard, the smoke test) and ``serving`` (one endpoint's
HTTP server). The AWS twin (SageMaker endpoints) sits beside them.
"""

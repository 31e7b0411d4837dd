"""Stage 1, ingestion: transactions from a source into the stream, aggregated per minute into the feature store.

``interface`` says what a notebook or the CLI may ask of the stream; ``local`` is the twin on this machine:
``ingest`` (the background service), ``eventlog`` (the durable log), ``stream`` (the job running the aggregator of
:mod:`helpers.core.aggregator`), ``checkpoint``, and ``sources/`` (the API poller, the simulator, replay). The AWS
twin sits beside them.
"""

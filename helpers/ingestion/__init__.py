"""Stage 1, ingestion: transactions from a source into the stream, aggregated per minute into the feature store.

``interface`` says what a notebook or the CLI may ask of the stream; ``local`` is the twin on this machine
(:mod:`helpers.ingest`: a background service over an SQLite event log). The AWS twin sits beside it.
"""

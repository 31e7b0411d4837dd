"""Reusable logic of the Realtime MLOps Workshop; the notebooks call it."""

"""Machinery only the local twin has: the state directory's paths, background processes, SQLite, the simulated
clock. Nothing here is used on AWS."""

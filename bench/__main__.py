"""python -m bench [name ...]: run the benchmarks (all by default), print a table, write results.json.

A benchmark that raises is recorded as failed, with its message, and the others still run: one failure never
loses the other figures. The exit status is 1 when any benchmark failed or missed its target.
"""
import importlib
import sys
import traceback

from bench.common import RESULTS, Record, save, table

MODULES = ["bench.ingest", "bench.features", "bench.flink", "bench.train", "bench.serve", "bench.suite"]


def run_module(module: str) -> list[Record]:
    """The module's records, or one failed record carrying the error's message."""
    try:
        return importlib.import_module(module).run()
    except Exception as error:  # a failing benchmark is a result to report, not a reason to lose the others
        traceback.print_exc()
        return [Record.failure(module.split(".")[-1], f"{type(error).__name__}: {error}")]


def main(names: list[str]) -> int:
    unknown = sorted(set(names) - {m.split(".")[-1] for m in MODULES})
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}: use any of {[m.split('.')[-1] for m in MODULES]}")
        return 2
    records = []
    for module in MODULES:
        if not names or module.split(".")[-1] in names:
            records += run_module(module)
    print(table(records))
    save(records, RESULTS)
    print(f"\nwritten to {RESULTS}")
    failed = [r.name for r in records if not r.meets_target]
    if failed:
        print(f"failed or missed their target: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""python -m bench [name ...]: run the benchmarks (all by default), print a table, write results.json."""
import importlib
import sys

from bench.common import RESULTS, save, table

MODULES = ["bench.ingest", "bench.features", "bench.train", "bench.serve", "bench.suite"]


def main(names: list[str]) -> int:
    records = []
    for module in MODULES:
        if names and module.split(".")[-1] not in names:
            continue
        records += importlib.import_module(module).run()
    print(table(records))
    save(records)
    print(f"\nwritten to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

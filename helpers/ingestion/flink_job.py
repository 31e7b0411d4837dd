"""The Managed Service for Apache Flink job (PyFlink): transactions in, per-minute features and dead letters out.

    Kinesis (one record per transaction, JSON)
      -> SQL dedupe on the whole hash (Flink's keep-first-row; state TTL 3 h)
      -> event-time windows: the shared rules of helpers.core.aggregator, one event at a time
      -> features: the Kinesis output stream (a Lambda writes them to SageMaker Feature Store)
      -> dead letters (later than the allowed lateness): JSON files in S3

The same file runs in three places: on Managed Flink (``main.py`` of the application zip, which
``python -m helpers aws package`` builds), and in local mode with PyFlink (tests, ``python -m bench flink``).
Only the connectors differ, named by the application properties: ``kinesis`` on AWS, ``filesystem`` locally.

Why the windows are a process function and not Flink's ``TUMBLE``: Flink emits watermarks periodically,
so which events count as late would depend on how fast the records arrived. Here the watermark is
computed from the events themselves (max event time - 60 s), so lateness, revisions and dead letters
depend only on the order of arrival, exactly as in the local engine, and the two are compared minute by
minute (tests/test_flink_job.py). Flink still does what it is for: the Kinesis source, the keyed dedupe
state with its TTL, checkpointed state for the windows, and the sinks.

Its state TTL is processing time (Flink has no other kind), the local engine's is event time: they agree
whenever a duplicate arrives within 3 h of the first copy, which the poller's overlapping polls always do.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# On Managed Flink this file is main.py at the zip's root, beside helpers/; in the repository it is in helpers/.
PACKAGE_ROOT = next(p for p in Path(__file__).resolve().parents if (p / "helpers" / "core").is_dir())
sys.path.insert(0, str(PACKAGE_ROOT))

from helpers.core.aggregator import Aggregator, WindowConfig  # noqa: E402

AWS_PROPERTIES = Path("/etc/flink/application_properties.json")
PROPERTY_GROUP = "FlinkApplicationProperties"
DEDUPE_TTL = "3 h"  # WindowConfig.dedupe_ttl_s
CONFIG = WindowConfig()

TRANSACTION_COLUMNS = [("hash", "STRING"), ("time", "BIGINT"), ("fee", "BIGINT"), ("size", "BIGINT"),
                       ("weight", "BIGINT")]
FEATURE_COLUMNS = [("tx_minute", "STRING"), ("window_start", "DOUBLE"), ("event_time", "DOUBLE"),
                   ("revision", "INT"), ("tx_count", "BIGINT"), ("total_fee", "BIGINT"), ("avg_fee", "DOUBLE"),
                   ("total_vsize", "BIGINT"), ("avg_fee_rate", "DOUBLE"), ("min_fee", "BIGINT"),
                   ("max_fee", "BIGINT")]
DEAD_LETTER_COLUMNS = TRANSACTION_COLUMNS + [("watermark", "BIGINT"), ("reason", "STRING")]

# Flink's documented deduplication: the first row per key, in arrival order. `hash` is quoted: Flink 2.x
# reserves the word.
DEDUPE_SQL = """
SELECT `hash`, `time`, fee, size, weight FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY `hash` ORDER BY proctime ASC) AS row_num FROM transactions
) WHERE row_num = 1
"""


def read_properties(path: Path | None = None) -> dict[str, str]:
    """The job's settings: the application's property group on AWS, the same JSON shape in local mode."""
    groups = json.loads((path or AWS_PROPERTIES).read_text())
    for group in groups:
        if group["PropertyGroupId"] == PROPERTY_GROUP:
            return group["PropertyMap"]
    raise KeyError(f"no property group {PROPERTY_GROUP!r} in {path or AWS_PROPERTIES}")


def columns_sql(columns) -> str:
    return ", ".join(f"`{name}` {kind}" for name, kind in columns)


def connector_options(props: dict[str, str], role: str) -> dict[str, str]:
    """WITH options for the table in ``role`` (source, features, dead_letters): Kinesis connector 5.x on AWS."""
    if props["connector"] == "filesystem":
        return {"connector": "filesystem", "path": props[f"{role}.path"], "format": "json"}
    if role == "dead_letters":
        return {"connector": "filesystem", "path": props["dead_letters.path"], "format": "json"}
    options = {"connector": "kinesis", "stream.arn": props[f"{role}.stream.arn"], "aws.region": props["aws.region"],
               "format": "json"}
    if role == "source":
        options["source.init.position"] = props.get("source.init.position", "TRIM_HORIZON")
    return options


def table_ddl(name: str, columns, options: dict[str, str], extra: str = "", partitioned_by: str = "") -> str:
    with_sql = ", ".join(f"'{key}' = '{value}'" for key, value in options.items())
    body = columns_sql(columns) + (f", {extra}" if extra else "")
    partition = f" PARTITIONED BY (`{partitioned_by}`)" if partitioned_by else ""
    return f"CREATE TABLE {name} ({body}){partition} WITH ({with_sql})"


def event_array(row):
    """One transaction row as the core's event array (the hash as its 32 bytes)."""
    import numpy as np

    from helpers.core.events import EVENT_DTYPE

    event = np.zeros(1, dtype=EVENT_DTYPE)
    event["hash"][0] = np.frombuffer(bytes.fromhex(row[0]), dtype=np.uint8)
    event["time"], event["fee"], event["size"], event["weight"] = row[1], row[2], row[3], row[4]
    return event


def build(props: dict[str, str]):
    """The job graph on a fresh environment; returns the statement set to execute."""
    from pyflink.common import Configuration, Row, Types
    from pyflink.datastream import OutputTag, StreamExecutionEnvironment
    from pyflink.datastream.functions import KeyedProcessFunction
    from pyflink.datastream.state import ValueStateDescriptor
    from pyflink.table import StreamTableEnvironment

    # Managed Flink configures checkpoints, state and restarts itself; local mode passes Flink settings as flink.*
    settings = Configuration()
    for key, value in props.items():
        if key.startswith("flink."):
            settings.set_string(key.removeprefix("flink."), value)
    env = StreamExecutionEnvironment.get_execution_environment(settings)
    env.add_python_file(str(PACKAGE_ROOT / "helpers"))
    if "parallelism" in props:
        env.set_parallelism(int(props["parallelism"]))
    if "checkpoint.interval.ms" in props:
        env.enable_checkpointing(int(props["checkpoint.interval.ms"]))
    t_env = StreamTableEnvironment.create(env)
    t_env.get_config().set("table.exec.state.ttl", DEDUPE_TTL)

    t_env.execute_sql(table_ddl("transactions", TRANSACTION_COLUMNS, connector_options(props, "source"),
                                extra="proctime AS PROCTIME()"))
    t_env.execute_sql(table_ddl("features", FEATURE_COLUMNS, connector_options(props, "features"),
                                partitioned_by="" if props["connector"] == "filesystem" else "tx_minute"))
    t_env.execute_sql(table_ddl("dead_letters", DEAD_LETTER_COLUMNS, connector_options(props, "dead_letters")))

    def row_type(columns):
        kinds = {"STRING": Types.STRING(), "BIGINT": Types.LONG(), "DOUBLE": Types.DOUBLE(), "INT": Types.INT()}
        return Types.ROW_NAMED([n for n, _ in columns], [kinds[k] for _, k in columns])

    dead_letter_tag = OutputTag("dead-letters", row_type(DEAD_LETTER_COLUMNS))

    class EventTimeWindows(KeyedProcessFunction):
        """The aggregator's state lives in Flink's keyed state, so checkpoints and restarts keep it."""

        def open(self, runtime_context):
            self.state = runtime_context.get_state(ValueStateDescriptor("windows", Types.PICKLED_BYTE_ARRAY()))

        def process_element(self, row, ctx):
            aggregator = Aggregator(CONFIG, self.state.value(), dedupe=False)
            emitted, dead = aggregator.process(event_array(row))
            self.state.update(aggregator.state)
            for record in emitted:
                yield Row(*(record[name] for name, _ in FEATURE_COLUMNS))
            for dead_letter in dead:
                yield dead_letter_tag, Row(*dead_letter)

    unique = t_env.to_data_stream(t_env.sql_query(DEDUPE_SQL))
    windows = (unique.key_by(lambda row: 0, key_type=Types.INT())  # one watermark: every event, one key
                     .process(EventTimeWindows(), output_type=row_type(FEATURE_COLUMNS)))
    statements = t_env.create_statement_set()
    statements.add_insert("features", t_env.from_data_stream(windows))
    statements.add_insert("dead_letters", t_env.from_data_stream(windows.get_side_output(dead_letter_tag)))
    return statements


def main(argv: list[str]) -> None:
    """``main.py`` on AWS; ``main.py --properties FILE`` in local mode, which waits for the bounded input's end."""
    local = len(argv) == 2 and argv[0] == "--properties"
    props = read_properties(Path(argv[1]) if local else None)
    result = build(props).execute()
    if local:
        result.wait()


if __name__ == "__main__":
    main(sys.argv[1:])

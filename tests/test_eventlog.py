"""The event log with several processes at once."""
import multiprocessing

from conftest import make_events
from helpers.core.events import EventBatch
from helpers.ingestion.eventlog import EventLog

PRODUCERS, BATCHES = 3, 40


def produce(path, producer):
    log = EventLog(path)
    for i in range(BATCHES):
        key = producer * 1_000_000 + i
        log.append(EventBatch(make_events([(key, 1_800_000_000 + i, key)]), fetched_at=float(i),
                              source_pos=str(i)), f"producer-{producer}")
    log.close()


def test_concurrent_producers_and_a_consumer_see_every_record_once_in_order(tmp_path):
    path = tmp_path / "events.db"
    EventLog(path).close()
    context = multiprocessing.get_context("spawn")
    producers = [context.Process(target=produce, args=(path, p)) for p in range(PRODUCERS)]
    for process in producers:
        process.start()
    consumer, offset, seen = EventLog(path), 0, []
    while any(p.is_alive() for p in producers) or consumer.last_offset() > offset:
        for record in consumer.read(offset, max_events=7):
            assert record.offset == offset + 1, "a reader only ever sees a gap-free prefix"
            offset = record.offset
            seen.append(int(record.events["fee"][0]))
    for process in producers:
        process.join()
        assert process.exitcode == 0
    expected = sorted(p * 1_000_000 + i for p in range(PRODUCERS) for i in range(BATCHES))
    assert sorted(seen) == expected and len(seen) == len(set(seen))
    assert consumer.last_source_pos("producer-1") == str(BATCHES - 1)
    assert consumer.totals()["events"] == PRODUCERS * BATCHES


def test_malformed_counts_are_kept_with_their_record(tmp_path):
    log = EventLog(tmp_path / "events.db")
    log.append(EventBatch(make_events([]), fetched_at=0.0, malformed={"fee: missing": 2}), "s")
    log.append(EventBatch(make_events([]), fetched_at=0.0, malformed={"fee: missing": 1, "hash: x": 1}), "s")
    assert log.totals()["malformed"] == {"fee: missing": 3, "hash: x": 1}

"""The benchmark runner: one failing benchmark never loses the others' figures."""
import json
import sys
import types

from bench import __main__ as runner
from bench.common import Record


def test_a_failing_benchmark_is_recorded_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    ok = types.ModuleType("bench.fake_ok")
    ok.run = lambda: [Record("fake_ok.speed", 2.0, "s", "<= 3")]
    broken = types.ModuleType("bench.fake_broken")
    broken.run = lambda: 1 / 0
    monkeypatch.setitem(sys.modules, "bench.fake_broken", broken)
    monkeypatch.setitem(sys.modules, "bench.fake_ok", ok)
    monkeypatch.setattr(runner, "MODULES", ["bench.fake_broken", "bench.fake_ok"])
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"name": "other.figure", "value": 1.0}]))  # an earlier run of another benchmark
    monkeypatch.setattr(runner, "RESULTS", results)

    assert runner.main([]) == 1
    printed = capsys.readouterr().out
    assert "fake_ok.speed" in printed and "fake_broken.FAILED" in printed and "ZeroDivisionError" in printed
    saved = {r["name"]: r for r in json.loads(results.read_text())}
    assert set(saved) == {"other.figure", "fake_ok.speed", "fake_broken.FAILED"}
    assert saved["fake_broken.FAILED"]["value"] is None and "division by zero" in saved["fake_broken.FAILED"]["error"]
    assert saved["fake_ok.speed"]["meets_target"] is True
    assert runner.main(["nope"]) == 2

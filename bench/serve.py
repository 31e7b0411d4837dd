"""Serving benchmarks: endpoint latency against in-process prediction, under 1 and 16 clients, and a model swap
under load. Request: 1 series, 30 steps, 100 samples."""
from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from dataclasses import replace

import httpx

from bench.common import Record, percentile, timed
from helpers.core.deepar_json import deepar_request
from helpers.core.hyperparameters import DeepARHyperparameters
from helpers.core.metrics import DEFAULT_QUANTILES
from helpers.core.preparation import BuildSettings
from helpers.endpoints import deploy
from helpers.ingestion import ingest
from helpers.local import daemon
from helpers.local.config import Paths
from helpers.notebooks import PINNED_NOW
from helpers.registry import MODEL_GROUP, ModelRegistry
from helpers.training import deepar, model_build
from helpers.training.interface import BASELINE_MARGIN, WQL_THRESHOLD
from helpers.training.params import ParameterStore

REQUESTS_1_CLIENT = 200
CLIENTS, REQUESTS_PER_CLIENT = 16, 25


def run() -> list[Record]:
    with tempfile.TemporaryDirectory() as tmp:
        for name in deploy.ENDPOINTS:
            os.environ[f"MLOPS_{name.upper()}_PORT"] = str(daemon.free_port())
        ingest.backfill(tmp, days=2.0, now=PINNED_NOW, progress=False)
        params = ParameterStore(Paths.at(tmp).params)  # a short training times inference; the gate must not judge it
        params.put(WQL_THRESHOLD, 10.0, by="bench")
        params.put(BASELINE_MARGIN, 100.0, by="bench")
        quick = BuildSettings(hyperparameters=DeepARHyperparameters(epochs=2), training_days=1.9,
                                          n_test_windows=4)
        for seed in (1, 2):  # the default architecture; a short training is enough to time inference
            build = model_build.run(tmp, replace(quick, seed=seed))
            if not build.succeeded:
                raise RuntimeError(f"the model build for the benchmark failed: {build.failure_reason}")
        deploy.approve(tmp, 1, by="bench", reason="latency benchmark")
        try:
            return _measure(tmp)
        finally:
            deploy.stop_endpoints(tmp)


def _measure(state: str) -> list[Record]:
    paths = Paths.at(state)
    history = deploy.latest_minutes(state, 1440)
    request = deepar_request(history, num_samples=100)
    predictor = deepar.load(ModelRegistry(paths.registry).model_path(MODEL_GROUP, 1))
    target = history.to_numpy(float)
    deepar.use_inference_threads()  # as the endpoint does: the same configuration on both sides
    in_process = timed(lambda: deepar.forecast(predictor, history.index[0], [target], "1min", DEFAULT_QUANTILES, 100),
                       50, warm_up=True)
    endpoint = f"{deploy.url(paths, 'staging')}/endpoints/staging/invocations"
    with httpx.Client(timeout=60) as client:
        one_client = timed(lambda: client.post(endpoint, json=request).raise_for_status(), REQUESTS_1_CLIENT,
                           warm_up=True)
    loaded, errors, seconds = _load(endpoint, request)
    swap_errors = _swap_under_load(state, endpoint, request)
    inproc_p50, server_p50 = statistics.median(in_process), statistics.median(one_client)
    details = {"in_process_p50_s": inproc_p50, "server_p50_1_client_s": server_p50,
               "server_p99_1_client_s": percentile(one_client, 99), "p50_16_clients_s": percentile(loaded, 50),
               "p99_16_clients_s": percentile(loaded, 99), "requests_per_s_16_clients": len(loaded) / seconds,
               "errors_16_clients": errors, "swap_failed_requests": swap_errors}
    return [
        Record("serve.p50_overhead_ratio", server_p50 / inproc_p50, "ratio", "<= 1.15", details),
        Record("serve.p99_over_p50_16_clients", percentile(loaded, 99) / percentile(loaded, 50), "ratio", "<= 2.0",
               details),
        Record("serve.swap_failed_requests", swap_errors, "requests", "<= 0", details),
    ]


def _load(endpoint: str, request: dict, stop: threading.Event | None = None) -> tuple[list[float], int, float]:
    """CLIENTS threads sending requests back to back: (latencies, failed requests, wall seconds)."""
    latencies, errors, lock = [], [0], threading.Lock()

    def client_loop():
        with httpx.Client(timeout=60) as client:
            sent = 0
            while (stop is None and sent < REQUESTS_PER_CLIENT) or (stop is not None and not stop.is_set()):
                started = time.perf_counter()
                try:
                    ok = client.post(endpoint, json=request).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - started)
                    errors[0] += not ok
                sent += 1

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors[0], time.perf_counter() - started


def _swap_under_load(state: str, endpoint: str, request: dict) -> int:
    """Failed requests while staging is rolled to version 2 and back, under 16 clients."""
    stop, result = threading.Event(), {}
    loader = threading.Thread(target=lambda: result.update(zip(("latencies", "errors", "s"),
                                                               _load(endpoint, request, stop))))
    loader.start()
    try:
        time.sleep(1.0)
        ModelRegistry(Paths.at(state).registry).set_approval(MODEL_GROUP, 2, "Approved", by="bench", reason="swap")
        deploy.deploy(state, "staging", 2, by="bench", reason="swap under load")
        deploy.rollback(state, "staging", by="bench", reason="swap back under load")
        time.sleep(1.0)
    finally:  # a failed swap must not leave 16 clients hammering a stopped endpoint, and python never exiting
        stop.set()
        loader.join()
    return int(result["errors"])



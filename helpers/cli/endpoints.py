"""Registry and endpoint commands: models, mlflow-ui, approve, reject, promote, deploy, rollback, describe,
smoke-test; serve-endpoint (what a deploy runs)."""
from __future__ import annotations

import subprocess
import sys

from helpers.cli.common import emit, workshop
from helpers.endpoints.interface import ENDPOINTS


def add_commands(commands) -> None:
    models = commands.add_parser("models", help="registered model versions with their approval status")
    models.set_defaults(run=lambda args: print(workshop(args).registry.versions().to_string(index=False)))
    ui = commands.add_parser("mlflow-ui", help="open the MLflow UI on the local registry")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(run=_mlflow_ui)

    for verb, text in (("approve", "approve a version: updates the threshold, deploys it to staging, smoke-tests it"),
                       ("reject", "reject a version"),
                       ("promote", "deploy the version staging serves to production (only if Approved, InService on "
                                   "staging and smoke-tested)")):
        decision = commands.add_parser(verb, help=text)
        decision.add_argument("version", type=int, nargs="?",
                              help="default: the latest pending one (to promote: the one staging serves)")
        decision.add_argument("--by", required=True, help="who decides")
        decision.add_argument("--reason", required=True, help="why")
        decision.set_defaults(run=_decide, verb=verb)

    deploy = commands.add_parser("deploy", help="deploy an Approved version to an endpoint (prod: through the "
                                                "promotion guard)")
    deploy.add_argument("endpoint", choices=ENDPOINTS)
    deploy.add_argument("version", type=int)
    deploy.set_defaults(run=lambda args: emit(workshop(args).endpoints.deploy(args.endpoint, args.version, by="cli")))
    rollback = commands.add_parser("rollback", help="swap an endpoint back to its previous version")
    rollback.add_argument("endpoint", choices=ENDPOINTS)
    rollback.set_defaults(run=lambda args: emit(workshop(args).endpoints.rollback(args.endpoint, by="cli")))
    commands.add_parser("describe", help="describe the staging and production endpoints").set_defaults(
        run=lambda args: emit({name: workshop(args).endpoints.describe(name) for name in ENDPOINTS}))
    smoke = commands.add_parser("smoke-test", help="smoke-test an endpoint again: a real forecast of the latest "
                                                   "held-out minutes")
    smoke.add_argument("endpoint", choices=ENDPOINTS, nargs="?", default="staging")
    smoke.set_defaults(run=_smoke_test)

    serve = commands.add_parser("serve-endpoint")
    serve.add_argument("endpoint", choices=ENDPOINTS)
    serve.set_defaults(run=_serve_endpoint)


def _decide(args) -> None:
    endpoints = workshop(args).endpoints
    action = {"approve": endpoints.approve, "reject": endpoints.reject, "promote": endpoints.promote}[args.verb]
    emit(action(args.version, by=args.by, reason=args.reason))


def _smoke_test(args) -> int:
    result = workshop(args).endpoints.smoke_test(args.endpoint)
    emit(result)
    return 0 if result.passed else 1


def _mlflow_ui(args) -> int:
    registry = workshop(args).registry
    print(f"MLflow UI on http://127.0.0.1:{args.port} (Ctrl-C to stop)")
    return subprocess.call([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", registry.models.tracking_uri,
                            "--host", "127.0.0.1", "--port", str(args.port)])


def _serve_endpoint(args) -> None:
    from helpers.endpoints import deploy, serving
    from helpers.local import daemon
    from helpers.local.config import Paths

    paths = Paths.at(args.state_dir)
    with daemon.holding_pid_file(paths.pid_file(f"endpoint-{args.endpoint}"), f"endpoint {args.endpoint!r}"):
        serving.serve(args.endpoint, deploy.ports(paths)[args.endpoint], deploy.state_file(paths, args.endpoint),
                      capture_dir=deploy.capture_dir(paths, args.endpoint))

"""One call gives a notebook every stage of the loop, on the backend it names: ``ws = connect(backend)``.

Each stage is built on first use, so notebook 01 never imports the training stack. The notebooks call the stages'
interfaces only (``helpers/<stage>/interface.py``); which twin answers, local or AWS, is decided here and nowhere
else, so no notebook cell asks which backend it runs on.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from helpers.local.config import Paths

BACKENDS = ("local", "aws")


@dataclass(frozen=True)
class Teardown:
    """What a teardown stopped, and what is still up (nothing, unless something refused to stop)."""

    stopped: list[str]
    still_running: list[str]


class LocalBackend:
    """Every stage on this machine, under one state directory."""

    name = "local"

    def __init__(self, state_dir: str | Path | None = None):
        self.paths = Paths.at(state_dir)

    @property
    def location(self) -> str:
        return f"local state lives in {self.paths.root}"

    def stream(self):
        from helpers.ingestion.local import LocalStream

        return LocalStream(self.paths)

    def features(self):
        from helpers.feature_store import open_tx_per_minute

        return open_tx_per_minute(self.paths.feature_store)

    def parameters(self):
        from helpers.training.params import ParameterStore

        return ParameterStore(self.paths.params)

    def builds(self):
        from helpers.training.local import LocalModelBuilds

        return LocalModelBuilds(self.paths)

    def registry(self):
        from helpers.registry.local import LocalRegistry

        return LocalRegistry(self.paths)

    def endpoints(self):
        from helpers.endpoints.local import LocalEndpoints

        return LocalEndpoints(self.paths)

    def monitor(self):
        from helpers.monitoring.local import LocalMonitor

        return LocalMonitor(self.paths)

    def teardown(self) -> Teardown:
        from helpers.local import services

        was_running = services.running(self.paths.root)
        still = services.stop_all(self.paths.root)
        return Teardown([name for name in was_running if name not in still], still)

    def inventory(self):
        from helpers.local import cleanup

        return cleanup.inventory(self.paths.root)

    def clean_up(self, ask=None, yes: bool = False):
        from helpers.local import cleanup

        return cleanup.clean_up(self.paths.root, ask=ask, yes=yes)

    def running_cost(self):
        from helpers.core.costs import RunningCost

        return RunningCost([], nothing_up="$0 an hour: the local backend runs on this machine")


class AwsBackend:
    """The AWS twins of every stage; a stage without one (none, today) says so when it is first used.

    Options: ``prefix`` (names every resource; one per learner sharing an account), ``region``, ``profile``.
    """

    name = "aws"
    BUILT = ("stream", "features", "parameters", "builds", "registry", "endpoints", "monitor")

    def __init__(self, **options):
        from helpers.aws.session import AwsContext

        self.context = AwsContext(**options)

    @property
    def location(self) -> str:
        region = self.context.region or "the default region"
        return f"AWS: the stacks {self.context.prefix}-storage and {self.context.prefix}-ingestion in {region}"

    def stream(self):
        from helpers.ingestion.aws import AwsStream

        return AwsStream(self.context)

    def features(self):
        return self.stream().features()

    def parameters(self):
        from helpers.training.ssm import SsmParameters

        self._ensure_stack("model-build")  # it creates the parameters, with their defaults
        return SsmParameters(self.context)

    def builds(self):
        from helpers.training.aws import AwsModelBuilds

        self._ensure_stack("model-build")
        return AwsModelBuilds(self.context)

    def registry(self):
        from helpers.registry.aws import AwsRegistry

        self._ensure_stack("model-build")
        return AwsRegistry(self.context)

    def endpoints(self):
        from helpers.endpoints.aws import AwsEndpoints

        self._ensure_stack("deployment")  # the deploy Lambda and its rules, the endpoints' role
        return AwsEndpoints(self.context)

    def monitor(self):
        from helpers.monitoring.aws import AwsMonitor

        return AwsMonitor(self.context)  # its start() deploys the monitoring stack, keeping the periods it was given

    def _ensure_stack(self, stack: str) -> None:
        """A stack the stage needs, created on its first use in this session and left alone when unchanged; the
        deployment stack gets this checkout's Lambda zip."""
        from helpers.aws import package, stacks

        deployed = self.__dict__.setdefault("_deployed", set())
        if stack in deployed:
            return
        parameters = {"Prefix": self.context.prefix}
        if stack == "deployment":  # (the monitor deploys its own stack, keeping the periods it was given)
            bucket = stacks.require(self.context, "storage").outputs["Bucket"]
            parameters["LambdaCodeKey"] = package.upload_lambda_zip(self.context, bucket)
        stacks.deploy(self.context, stack, parameters)
        deployed.add(stack)

    def teardown(self) -> Teardown:
        """Stop what bills by the hour while idle: the monitor's schedules, both endpoints (deleted: their configs and
        models stay, so approving or promoting brings them back), the Flink application and the poller's schedule.
        No data is deleted (that is :meth:`clean_up`). ``still_running``: what still bills, found in the account."""
        from helpers.aws.session import AwsSetupError
        from helpers.endpoints.aws import AwsEndpoints

        stopped = []
        for what, stop in (("monitor schedules", lambda: self.monitor().stop()),
                           ("endpoints", lambda: AwsEndpoints(self.context).stop()),
                           ("poller schedule and Flink application", lambda: self.stream().stop())):
            try:
                done = stop()
            except AwsSetupError:  # its stack was never deployed: nothing of it runs
                continue
            stopped += [f"endpoint {name}" for name in done] if what == "endpoints" else [what]
        return Teardown(stopped, [what for what, _ in self.running_cost().items])

    def inventory(self):
        from helpers.aws import cleanup

        return cleanup.inventory(self.context)

    def clean_up(self, ask=None, yes: bool = False):
        from helpers.aws import cleanup

        return cleanup.clean_up(self.context, ask=ask, yes=yes)

    def running_cost(self):
        from helpers.aws.costs import running_cost

        return running_cost(self.context)

    def __getattr__(self, stage: str):
        if stage in Workshop.STAGES:
            def not_built(*_args, **_kwargs):
                raise NotImplementedError(
                    f"backend='aws': the {stage} stage has no AWS implementation yet (it lands with the AWS backend "
                    f"issues, as helpers/<stage>/aws.py beside the local one). Run with backend='local'.")
            return not_built
        raise AttributeError(stage)


class Workshop:
    """Every stage of the loop, each built on first use from the backend."""

    STAGES = ("stream", "features", "parameters", "builds", "registry", "endpoints", "monitor")

    def __init__(self, backend: LocalBackend | AwsBackend):
        self._backend = backend
        self.backend = backend.name

    @property
    def location(self) -> str:
        """Where this backend keeps its state, in words."""
        return self._backend.location

    @cached_property
    def stream(self):
        """Ingestion: :class:`helpers.ingestion.interface.Stream`."""
        return self._backend.stream()

    @cached_property
    def features(self):
        """The feature group: :class:`helpers.feature_store.interface.FeatureGroupReader`."""
        return self._backend.features()

    @cached_property
    def parameters(self):
        """The quality gate's parameters and friends: :class:`helpers.training.interface.Parameters`."""
        return self._backend.parameters()

    @cached_property
    def builds(self):
        """The model build pipeline: :class:`helpers.training.interface.ModelBuilds`."""
        return self._backend.builds()

    @cached_property
    def registry(self):
        """Registered model versions: :class:`helpers.registry.interface.Registry`."""
        return self._backend.registry()

    @cached_property
    def endpoints(self):
        """Approval, staging, production, invocation: :class:`helpers.endpoints.interface.Endpoints`."""
        return self._backend.endpoints()

    @cached_property
    def monitor(self):
        """Hourly scoring, alarms, retrains: :class:`helpers.monitoring.interface.Monitor`."""
        return self._backend.monitor()

    def teardown(self) -> Teardown:
        """Stop everything this backend runs; returns what stopped and what is still up."""
        if "features" in self.__dict__:
            self.features.close()
            del self.__dict__["features"]
        return self._backend.teardown()

    def running_cost(self):
        """What bills by the hour now, and how much (:class:`helpers.core.costs.RunningCost`; print it)."""
        return self._backend.running_cost()

    def inventory(self) -> list:
        """Everything the workshop made on this backend (:class:`helpers.core.cleanup.Resource`), found where it
        lives: on AWS by its tags and its stacks, here the running services and the state directory."""
        return self._backend.inventory()

    def clean_up(self, yes: bool = False, ask=None):
        """Delete everything :meth:`inventory` finds, after asking (``ask``, default ``input``) unless ``yes``; then
        look again. Returns a :class:`helpers.core.cleanup.CleanupReport` (``summary()``: clean or NOT CLEAN)."""
        if "features" in self.__dict__:
            self.features.close()
        for stage in self.STAGES:  # built again on next use: what they held is being deleted
            self.__dict__.pop(stage, None)
        return self._backend.clean_up(ask=ask, yes=yes)


def connect(backend: str = "local", state_dir: str | Path | None = None, **aws_options) -> Workshop:
    """Every stage on ``backend``: "local" (this machine, under ``state_dir``) or "aws"."""
    if backend == "local":
        return Workshop(LocalBackend(state_dir))
    if backend == "aws":
        return Workshop(AwsBackend(**aws_options))
    raise ValueError(f"backend={backend!r}: use one of {BACKENDS}")

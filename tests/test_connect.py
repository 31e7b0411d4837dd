"""The seam: connect() gives every stage behind its interface, the local twins satisfy the interfaces, the AWS
backend names the stage it lacks, and the notebooks go through connect() only."""
import inspect
import json
import re
import subprocess
import sys
from typing import Protocol

import pytest

from helpers.connect import Teardown, Workshop, connect
from helpers.endpoints.interface import Endpoints
from helpers.feature_store.interface import FeatureGroupReader
from helpers.ingestion.interface import Stream
from helpers.monitoring.interface import Monitor
from helpers.notebooks import NOTEBOOK_DIR
from helpers.registry.interface import Registry
from helpers.training.interface import ModelBuilds, Parameters

INTERFACES = {"stream": Stream, "features": FeatureGroupReader, "parameters": Parameters, "builds": ModelBuilds,
              "registry": Registry, "endpoints": Endpoints, "monitor": Monitor}


def protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in vars(protocol).items()
            if inspect.isfunction(member) and not name.startswith("_")}


def differences(implementation, protocol: type) -> list[str]:
    """Each method of ``protocol`` that ``implementation`` lacks, or takes other parameters for."""
    found = []
    for name, wanted in protocol_methods(protocol).items():
        method = getattr(implementation, name, None)
        if method is None:
            found.append(f"{name}: missing")
            continue
        expected = [p for p in wanted.parameters if p != "self"]
        actual = list(inspect.signature(method).parameters)
        if actual[:len(expected)] != expected and "kwargs" not in actual:
            found.append(f"{name}{tuple(actual)}: the interface has {tuple(expected)}")
    return found


def test_every_stage_is_covered_by_an_interface():
    assert set(INTERFACES) == set(Workshop.STAGES)
    assert all(issubclass(p, Protocol) and protocol_methods(p) for p in INTERFACES.values())


def test_the_interface_check_finds_a_missing_method_and_a_renamed_parameter():
    class Partial:
        def status(self):
            ...

        def dead_letters(self, rows):
            ...

    found = differences(Partial(), Stream)
    assert "start: missing" in found and not any(d.startswith("status") for d in found)
    assert "dead_letters('rows',): the interface has ('limit',)" in found


@pytest.mark.parametrize("stage", Workshop.STAGES)
def test_each_local_stage_satisfies_its_interface(tmp_path, stage):
    workshop = connect("local", tmp_path)
    implementation = getattr(workshop, stage)
    assert differences(implementation, INTERFACES[stage]) == []
    workshop.teardown()


def test_each_built_aws_stage_satisfies_its_interface():
    from helpers.aws.session import AwsContext
    from helpers.feature_store.aws import AwsFeatureGroup
    from helpers.ingestion.aws import AwsStream

    context = AwsContext(prefix="ws-test", region="eu-west-1")
    assert differences(AwsStream(context), Stream) == []
    features = AwsFeatureGroup(context, {"FeatureGroupName": "ws-test-tx-per-minute"})
    assert differences(features, FeatureGroupReader) == []
    from helpers.training.aws import AwsModelBuilds
    from helpers.training.ssm import SsmParameters

    assert differences(SsmParameters(context), INTERFACES["parameters"]) == []
    assert differences(AwsModelBuilds(context), INTERFACES["builds"]) == []
    from helpers.endpoints.aws import AwsEndpoints
    from helpers.registry.aws import AwsRegistry

    assert differences(AwsRegistry(context), INTERFACES["registry"]) == []
    assert differences(AwsEndpoints(context), INTERFACES["endpoints"]) == []
    from helpers.monitoring.aws import AwsMonitor

    assert differences(AwsMonitor(context), INTERFACES["monitor"]) == []
    assert {"stream", "features", "parameters", "builds", "registry", "endpoints", "monitor"} <= set(
        connect("aws")._backend.BUILT)


def test_stages_are_built_on_first_use_so_notebook_01_loads_no_training_stack(tmp_path):
    code = ("import sys\nfrom helpers.connect import connect\nws = connect('local', sys.argv[1])\n"
            "ws.stream.status(); ws.features.latest_online(1)\n"
            "print(sorted(m for m in ('mlflow', 'torch', 'gluonts', 'boto3') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_aws_names_the_stage_it_lacks_and_a_bad_backend_names_the_choices(tmp_path):
    workshop = connect("aws", prefix="ws-test", region="eu-west-1")
    assert workshop.backend == "aws" and "ws-test-ingestion in eu-west-1" in workshop.location
    unbuilt = [stage for stage in Workshop.STAGES if stage not in workshop._backend.BUILT]
    for stage in unbuilt:  # none, once every AWS twin has landed
        with pytest.raises(NotImplementedError, match=f"the {stage} stage has no AWS implementation yet"):
            getattr(workshop, stage)
    with pytest.raises(ValueError, match=r"backend='gcp': use one of \('local', 'aws'\)"):
        connect("gcp")


def test_teardown_of_a_fresh_state_reports_nothing_stopped_and_nothing_left(tmp_path):
    workshop = connect("local", tmp_path)
    assert str(workshop.running_cost()) == "$0 an hour: the local backend runs on this machine"
    workshop.features.latest_online(1)  # opened: the teardown closes it
    assert workshop.teardown() == Teardown(stopped=[], still_running=[])
    assert "local state lives in" in workshop.location and str(tmp_path) in workshop.location


def notebook_code(path) -> str:
    return "\n".join("".join(cell["source"]) for cell in json.loads(path.read_text())["cells"]
                     if cell["cell_type"] == "code")


# What a notebook may import from helpers: the seam, the pure core, and what both backends share (the figures, the
# sources that generate or replay transactions, the data-quality report over a feature group).
NOTEBOOK_IMPORTS = re.compile(
    r"helpers(\.connect|\.core\.\w+|\.plots|\.ingestion\.sources\.\w+|\.feature_store\.quality)?")


@pytest.mark.parametrize("notebook", sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_choose_the_backend_in_one_call_and_reach_no_local_module(notebook):
    code = notebook_code(notebook)
    assert "ws = connect(backend, state_dir)" in code
    assert "if backend" not in code and "backend ==" not in code
    imported = [(module, names) for module, names in re.findall(r"^from (helpers\S*) import (.+)$", code, re.M)]
    assert imported and all(NOTEBOOK_IMPORTS.fullmatch(module) for module, _ in imported), imported
    assert all(names.strip() == "plots" for module, names in imported if module == "helpers"), imported
    assert "127.0.0.1" not in code and "httpx" not in code and "pid" not in code


def test_the_notebook_import_rule_refuses_a_local_module():
    assert NOTEBOOK_IMPORTS.fullmatch("helpers.core.times") and NOTEBOOK_IMPORTS.fullmatch("helpers.connect")
    assert not NOTEBOOK_IMPORTS.fullmatch("helpers.ingestion.ingest")
    assert not NOTEBOOK_IMPORTS.fullmatch("helpers.local.config")


def test_the_command_line_acts_on_the_backend_it_is_given(tmp_path, monkeypatch):
    from helpers.cli import parser
    from helpers.cli.common import workshop

    monkeypatch.setenv("MLOPS_AWS_PREFIX", "ws-cli")
    on_aws = workshop(parser().parse_args(["--backend", "aws", "models"]))
    assert on_aws.backend == "aws" and on_aws._backend.context.prefix == "ws-cli"
    here = workshop(parser().parse_args(["--state-dir", str(tmp_path), "models"]))
    assert here.backend == "local" and str(tmp_path) in here.location

"""The workshop's CloudFormation stacks: deploy or describe them, read their outputs, explain their failures.

The same templates deploy with ``aws cloudformation deploy`` (cloudformation/README.md) and from here, through
boto3, which is what notebook 01 does: ``deploy`` creates a stack, updates it when its template or parameters
changed, and leaves it alone otherwise. A parameter an update does not name keeps its deployed value, so a stack
deployed by hand with, say, ``EndpointInstanceType=ml.c5.large`` keeps it when a notebook updates the stack.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from helpers.aws.session import AwsContext, AwsSetupError, explained

TEMPLATES = Path(__file__).resolve().parents[2] / "cloudformation"
STACKS = ("storage", "ingestion", "model-build", "deployment", "monitoring")  # in deploy order: each imports
# the exports of those before it
FAILED_FIRST_CREATE = {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED"}
BUSY_SUFFIX = "_IN_PROGRESS"


@dataclass(frozen=True)
class Stack:
    name: str
    status: str
    outputs: dict[str, str]
    parameters: dict[str, str] = field(default_factory=dict)


def stack_name(context: AwsContext, stack: str) -> str:
    return f"{context.prefix}-{stack}"


def describe(context: AwsContext, stack: str) -> Stack | None:
    """The stack as it is now; None if it does not exist."""
    from botocore.exceptions import ClientError

    name = stack_name(context, stack)
    try:
        with explained(f"describing the stack {name}"):
            found = context.client("cloudformation").describe_stacks(StackName=name)["Stacks"][0]
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    outputs = {o["OutputKey"]: o["OutputValue"] for o in found.get("Outputs", [])}
    parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in found.get("Parameters", [])}
    return Stack(name, found["StackStatus"], outputs, parameters)


def require(context: AwsContext, stack: str) -> Stack:
    """The stack, complete; an AwsSetupError saying what to do when it is missing, failed or busy."""
    found = describe(context, stack)
    if found is None:
        raise AwsSetupError(f"stack {stack_name(context, stack)} does not exist: run notebook 01 with "
                            "backend='aws' (or `python -m helpers aws deploy`), which deploys it")
    check_usable(context, found)
    return found


def check_usable(context: AwsContext, stack: Stack) -> None:
    region = context.session.region_name
    events = (f"https://console.aws.amazon.com/cloudformation/home?region={region}#/stacks/events?"
              f"stackId={stack.name}")
    if stack.status in FAILED_FIRST_CREATE:
        raise AwsSetupError(
            f"stack {stack.name} is in {stack.status}: its first creation failed and CloudFormation cannot update "
            f"it. Read why in its events ({events}, or `aws cloudformation describe-stack-events --stack-name "
            f"{stack.name}`); the first FAILED event names the cause, often a quota or a missing permission. "
            f"Then delete it (`aws cloudformation delete-stack --stack-name {stack.name}`) and deploy again.")
    if stack.status.endswith(BUSY_SUFFIX):
        raise AwsSetupError(f"stack {stack.name} is busy ({stack.status}): wait until it finishes (a few minutes; "
                            f"{events}), then run the cell again")


def deploy(context: AwsContext, stack: str, parameters: dict[str, str]) -> Stack:
    """Create the stack, or update it if its template or parameters changed; wait; return it complete."""
    cfn = context.client("cloudformation")
    name = stack_name(context, stack)
    template = (TEMPLATES / f"{stack}.yaml").read_text()
    existing = describe(context, stack)
    given = [{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameters.items()]
    if existing is not None:
        check_usable(context, existing)
        kept = sorted((set(existing.parameters) & declared_parameters(template)) - set(parameters))
        given += [{"ParameterKey": k, "UsePreviousValue": True} for k in kept]
    request = {"StackName": name, "TemplateBody": template, "Parameters": given,
               "Capabilities": ["CAPABILITY_NAMED_IAM"], "Tags": context.tags}
    with explained(f"deploying the stack {name}"):
        if existing is None:
            cfn.create_stack(**request, OnFailure="ROLLBACK")
            waiter = "stack_create_complete"
        else:
            if not _update(cfn, request):
                return existing
            waiter = "stack_update_complete"
    _wait(context, cfn, name, waiter)
    return require(context, stack)


def declared_parameters(template: str) -> set[str]:
    """The names under the template's top-level ``Parameters:`` (the templates use two-space indents)."""
    section = re.search(r"^Parameters:\n((?:(?:  .*)?\n)*)", template, re.MULTILINE)
    return set(re.findall(r"^  (\w+):", section.group(1), re.MULTILINE)) if section else set()


def _update(cfn, request: dict) -> bool:
    """Start an update; False when there is nothing to change."""
    from botocore.exceptions import ClientError

    try:
        cfn.update_stack(**request)
    except ClientError as error:
        if "No updates are to be performed" in str(error):
            return False
        raise
    return True


def _wait(context: AwsContext, cfn, name: str, waiter: str) -> None:
    from botocore.exceptions import WaiterError

    try:
        cfn.get_waiter(waiter).wait(StackName=name, WaiterConfig={"Delay": 10, "MaxAttempts": 180})
    except WaiterError:
        found = describe(context, name.removeprefix(f"{context.prefix}-"))
        reasons = [e.get("ResourceStatusReason", "") for e in cfn.describe_stack_events(StackName=name)["StackEvents"]
                   if e.get("ResourceStatus", "").endswith("FAILED")][:3]
        raise AwsSetupError(f"stack {name} did not deploy ({found.status if found else 'gone'}): "
                            f"{'; '.join(reasons) or 'see its events in the CloudFormation console'}") from None

"""EventBridge Scheduler schedules, switched on and off: the poller's and the monitor's."""
from __future__ import annotations

from helpers.aws.session import AwsContext, explained

# UpdateSchedule replaces a schedule whole: what to send back of GetSchedule's answer, so only its state changes.
KEPT = ("Name", "GroupName", "ScheduleExpression", "FlexibleTimeWindow", "Target", "Description",
        "ScheduleExpressionTimezone", "StartDate", "EndDate", "KmsKeyArn", "ActionAfterCompletion")


def set_state(context: AwsContext, name: str, state: str) -> None:
    """ENABLED or DISABLED; nothing is sent when the schedule is so already."""
    scheduler = context.client("scheduler")
    with explained(f"setting the schedule {name} to {state}"):
        current = scheduler.get_schedule(Name=name)
        if current["State"] != state:
            scheduler.update_schedule(**{k: current[k] for k in KEPT if k in current}, State=state)

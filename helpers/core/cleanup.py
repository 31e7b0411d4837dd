"""What a clean-up found, deleted and left, the same on both backends: ``ws.inventory()`` and ``ws.clean_up()``.

Each backend finds what the workshop made (on AWS by its tags and its stacks, here the running services and the
state directory), asks before deleting anything, deletes, then looks again: ``left`` is what that second look still
finds, never what the deletions claimed. A question nobody can answer (a headless run: papermill, nbval, a closed
stdin) deletes nothing and says how to run it without a question.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

# What asking raises when nobody can answer: EOFError (stdin closed), IPython's StdinNotImplementedError (a
# NotImplementedError: papermill, nbval), OSError (pytest's captured stdin).
NOBODY_TO_ASK = (EOFError, NotImplementedError, OSError)
YES = {"y", "yes"}


@dataclass(frozen=True)
class Resource:
    """One thing the workshop made: its kind (``bucket``, ``endpoint``, ``stack``, ``service``, ``directory``, ...),
    its name, its ARN where it has one, how it was found (``tag``, ``stack <name>``, ...) and, on AWS, the stack
    that deletes it with itself (``owner``; None: the clean-up deletes it)."""

    kind: str
    name: str
    arn: str | None = None
    found_by: str = "tag"
    owner: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name


@dataclass(frozen=True)
class Failure:
    """A deletion that raised: the resource and the error, in words. The clean-up carries on with the rest."""

    resource: Resource
    error: str

    def __str__(self) -> str:
        return f"{self.resource}: {self.error}"


@dataclass
class CleanupReport:
    """What a clean-up found, deleted, failed to delete, and what is left (found again afterwards; None: the second
    look failed). ``pending``: what can only be scheduled for deletion (a KMS key), which is not left over."""

    subject: str  # what was looked for: "tagged WorkshopPrefix=mlops-workshop"
    place: str  # where: a region, or a state directory
    found: list[Resource]
    by_hand: str  # where to delete by hand what is left
    confirm_hint: str  # how to run it without a question
    deleted: list[Resource] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    left: list[Resource] | None = field(default_factory=list)
    pending: list[Resource] = field(default_factory=list)
    asked: bool = False  # a question was put
    declined: bool = False  # ... and the answer was not yes
    unanswered: bool = False  # ... and nobody could answer it

    @property
    def _them(self) -> str:
        return "it" if len(self.found) == 1 else "them"

    @property
    def clean(self) -> bool:
        return self.left == []

    def summary(self) -> str:
        """One plain sentence: clean, NOT CLEAN (what is left and where to delete it), or why nothing was deleted."""
        found = (f"the {resources(len(self.found))} {self.subject} in {self.place} "
                 f"{'is' if len(self.found) == 1 else 'are all'} still there")
        if self.unanswered:
            return (f"nothing deleted: nobody could answer the question (a headless run cannot), so {found}. To "
                    f"delete {self._them} without a question: {self.confirm_hint}.")
        if self.declined:
            return (f"nothing deleted: the answer was not yes, so {found}; to delete {self._them}, answer y, or "
                    f"{self.confirm_hint}.")
        errors = f" Errors: {'; '.join(map(str, self.failed))}." if self.failed else ""
        if self.left is None:
            return (f"NOT CLEAN: what is left {self.subject} in {self.place} could not be listed, so nothing proves "
                    f"it clean.{errors} Look {self.by_hand}")
        if self.left:
            return (f"NOT CLEAN: {resources(len(self.left))} {'is' if len(self.left) == 1 else 'are'} left "
                    f"{self.subject} in {self.place}: "
                    f"{', '.join(map(str, self.left))}.{errors} Delete {'it' if len(self.left) == 1 else 'them'} "
                    f"{self.by_hand}")
        text = f"clean: nothing {self.subject} is left in {self.place}"
        if self.deleted:
            text += f" ({resources(len(self.deleted))} deleted)"
        if self.pending:
            text += (f"; pending deletion, which cannot be hurried and costs nothing meanwhile: "
                     f"{', '.join(map(str, self.pending))}")
        text += "."
        if self.failed:
            text += f" {len(self.failed)} error{'s' * (len(self.failed) > 1)} along the way, though nothing is left." \
                    f"{errors}"
        return text


def resources(n: int) -> str:
    return f"{n} resource{'' if n == 1 else 's'}"


def question(found: list[Resource], subject: str, place: str) -> str:
    """The question put before deleting: how many of what, and where."""
    kinds = ", ".join(f"{count} {kind}" for kind, count in Counter(r.kind for r in found).most_common())
    these = "this resource" if len(found) == 1 else f"these {len(found)} resources"
    return (f"Delete {these} {subject} in {place} ({kinds})? This cannot be undone. "
            "Type y to delete: ")


def confirmed(report: CleanupReport, ask: Callable[[str], str] | None, yes: bool) -> bool:
    """True to go ahead: ``yes``, or the answer y. Notes on ``report`` whether it asked, and why it stops."""
    if yes:
        return True
    report.asked = True
    try:
        answer = (ask or input)(question(report.found, report.subject, report.place))
    except NOBODY_TO_ASK:
        report.unanswered = report.declined = True
        return False
    report.declined = str(answer).strip().lower() not in YES
    return not report.declined


def finish(report: CleanupReport, left: list[Resource] | None, pending: list[Resource] = ()) -> CleanupReport:
    """Record what the second look found: what is not left, nor pending, was deleted."""
    report.left, report.pending = left, list(pending)
    gone = {r.key for r in (left or [])} | {r.key for r in pending}
    report.deleted = [r for r in report.found if r.key not in gone] if left is not None else []
    return report


class Cleanup(Protocol):
    """What each backend offers :meth:`helpers.connect.Workshop.inventory` and ``clean_up``."""

    def inventory(self) -> list[Resource]:
        """Everything the workshop made on this backend, found where it lives (never from a list of names)."""
        ...

    def clean_up(self, ask: Callable[[str], str] | None = None, yes: bool = False) -> CleanupReport:
        """Ask (unless ``yes``), delete everything :meth:`inventory` finds, and look again."""
        ...

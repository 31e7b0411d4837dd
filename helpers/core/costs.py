"""What is up and what it costs by the hour: notebooks 04 and 05 print it on both backends
(``ws.running_cost()``), so a forgotten endpoint cannot go unnoticed."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunningCost:
    items: list[tuple[str, float | None]]  # (what is up, dollars an hour; None: not in the price table)
    nothing_up: str = "nothing that bills by the hour is up"  # what to say when nothing is

    @property
    def per_hour(self) -> float:
        return sum(price for _, price in self.items if price is not None)

    def __str__(self) -> str:
        if not self.items:
            return self.nothing_up
        lines = [f"  {what}: " + (f"${price:.3f}/h" if price is not None else "see the SageMaker pricing page")
                 for what, price in self.items]
        return "\n".join([f"UP NOW: ${self.per_hour:.2f} an hour, ${24 * self.per_hour:.2f} a day, until deleted "
                          "(python -m helpers aws cleanup, or notebook 99)", *lines])

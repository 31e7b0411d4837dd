"""The quality gate's rule: a model is registered only if it is good enough *and* better than naive.

Pure logic, shared by the pipeline step, the benchmarks and (later) the AWS condition step. Both numbers are read
from the parameter store when the gate runs, never baked into the pipeline:

1. its mean wQL is at most the threshold;
2. it is no worse than the best naive baseline on the same test windows, within a margin:
   mean wQL <= best baseline's mean wQL x (1 + margin).

The margin absorbs the test set's noise: even the simulator's oracle, the best forecast possible, loses to a naive
forecast on some short test sets. It was chosen from that noise (``python -m bench train`` measures how often the
gate passes the oracle and how often it rejects a clearly worse forecast).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GateDecision:
    score: float  # the model's mean wQL on the test windows
    threshold: float
    margin: float
    best_baseline: str
    best_baseline_score: float

    @property
    def baseline_bound(self) -> float:
        return self.best_baseline_score * (1 + self.margin)

    @property
    def passed_threshold(self) -> bool:
        return self.score <= self.threshold

    @property
    def passed_baseline(self) -> bool:
        return self.score <= self.baseline_bound

    @property
    def passed(self) -> bool:
        return self.passed_threshold and self.passed_baseline

    @property
    def reason(self) -> str:
        """Both conditions, each with its numbers, the failed ones first."""
        threshold = (f"mean wQL {self.score:.4f} {'<=' if self.passed_threshold else '>'} threshold "
                     f"{self.threshold:.4f}")
        baseline = (f"mean wQL {self.score:.4f} {'<=' if self.passed_baseline else '>'} {self.best_baseline} "
                    f"{self.best_baseline_score:.4f} x (1 + margin {self.margin:g}) = {self.baseline_bound:.4f}")
        conditions = sorted([(self.passed_threshold, threshold), (self.passed_baseline, baseline)])
        verdict = "passed" if self.passed else "failed"
        return f"quality gate {verdict}: " + "; ".join(
            f"{text} ({'passed' if ok else 'FAILED'})" for ok, text in conditions)

    @property
    def advice(self) -> str:
        """What to do after a rejection (empty when the gate passed)."""
        steps = []
        if not self.passed_baseline:
            steps.append(f"The model forecast worse than {self.best_baseline}, a rule with no learning at all, so it "
                         "is not worth deploying. Train on more history (training_days), or for longer (epochs); if "
                         "the test windows were unusual (a fee spike), more test windows (n_test_windows) judge "
                         "more fairly.")
        if not self.passed_threshold:
            steps.append(f"Its mean wQL is above the threshold {self.threshold:.4f}. Check the data (notebook 02's "
                         "quality report), train on more history, or, if the market itself got harder to forecast, "
                         "raise the bar on purpose: python -m helpers param set /rtmlops/model-build/wql-threshold "
                         "VALUE.")
        return " ".join(steps + ["Then run the build again (notebook 03, or python -m helpers train)."]) \
            if steps else ""

    def as_dict(self) -> dict:
        return {**asdict(self), "baseline_bound": self.baseline_bound, "passed_threshold": self.passed_threshold,
                "passed_baseline": self.passed_baseline, "passed": self.passed, "reason": self.reason,
                "advice": self.advice}


def decide(score: float, baseline_scores: dict[str, float], threshold: float, margin: float) -> GateDecision:
    """The gate's decision for a model scoring ``score`` beside baselines scored on the same windows."""
    if not baseline_scores:
        raise ValueError("the quality gate needs at least one baseline scored on the same test windows")
    if margin < 0:
        raise ValueError(f"margin={margin}: must be >= 0 (0: at least as good as the best baseline)")
    best = min(baseline_scores, key=baseline_scores.get)
    return GateDecision(score, threshold, margin, best, baseline_scores[best])

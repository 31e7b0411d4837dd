"""Data quality of the per-minute features: gaps, reconciled duplicates, late revisions, outliers.

The original system never looked: duplicate minute rows were never reconciled
and missing minutes never filled. This report says, for a time range, what the
store holds and what its readers reconcile on the way out.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers.feature_store.store import FeatureGroup

OUTLIER_FEATURES = ("tx_count", "avg_fee")


@dataclass
class DataQualityReport:
    start: pd.Timestamp
    end: pd.Timestamp
    minutes_expected: int
    minutes_present: int
    gaps: pd.DataFrame  # one row per run of missing minutes: gap_start, gap_end (exclusive), minutes
    revised: pd.DataFrame  # minutes written more than once: revisions, first and final tx_count
    duplicate_rows: int  # rows repeating a (minute, revision) already stored: reconciled on read
    outliers: pd.DataFrame  # minute, feature, value, rolling median, robust z-score
    series: pd.DataFrame  # the latest value per minute on the complete grid, for the figure

    def summary(self) -> pd.Series:
        return pd.Series({
            "range": f"{self.start} to {self.end}",
            "minutes expected": self.minutes_expected,
            "minutes present": self.minutes_present,
            "missing minutes (gaps)": int(self.gaps["minutes"].sum()),
            "gap runs": len(self.gaps),
            "minutes revised by late events": len(self.revised),
            "late revision rows": int((self.revised["revisions"] - 1).sum()),
            "duplicate rows reconciled": self.duplicate_rows,
            "outliers": len(self.outliers),
        })


def data_quality(group: FeatureGroup, start, end, outlier_z: float = 6.0, window: int = 61) -> DataQualityReport:
    """Report on [start, end). An outlier is over ``outlier_z`` robust z-scores (median/MAD over ``window``
    minutes, centred) from its neighbours."""
    dataset = group.training_dataset(start, end, features=list(OUTLIER_FEATURES))
    raw = group.sql(f"SELECT tx_minute, revision, tx_count FROM {group.table_name}"
                    " WHERE window_start >= ? AND window_start < ?",
                    [dataset.start.timestamp(), dataset.end.timestamp()])
    present = dataset.frame.notna().any(axis=1)
    return DataQualityReport(
        start=dataset.start, end=dataset.end, minutes_expected=len(dataset.frame),
        minutes_present=int(present.sum()), gaps=_gap_runs(present), revised=_revisions(raw),
        duplicate_rows=int(raw.duplicated(["tx_minute", "revision"]).sum()),
        outliers=_outliers(dataset.frame, outlier_z, window), series=dataset.frame,
    )


def _gap_runs(present: pd.Series) -> pd.DataFrame:
    missing = ~present.to_numpy()
    edges = np.flatnonzero(np.diff(np.r_[0, missing.astype(int), 0]))
    starts, ends = edges[::2], edges[1::2]
    index = present.index
    step = index[1] - index[0] if len(index) > 1 else pd.Timedelta("1min")
    return pd.DataFrame({"gap_start": index[starts], "gap_end": index[ends - 1] + step, "minutes": ends - starts})


def _revisions(raw: pd.DataFrame) -> pd.DataFrame:
    ordered = raw.drop_duplicates(["tx_minute", "revision"]).sort_values(["tx_minute", "revision"])
    per_minute = ordered.groupby("tx_minute").agg(
        revisions=("revision", "size"), first_tx_count=("tx_count", "first"), final_tx_count=("tx_count", "last"))
    return per_minute[per_minute["revisions"] > 1].reset_index()


def _outliers(frame: pd.DataFrame, threshold: float, window: int) -> pd.DataFrame:
    found = []
    for feature in OUTLIER_FEATURES:
        values = frame[feature].astype(float)
        median = values.rolling(window, center=True, min_periods=window // 3).median()
        mad = (values - median).abs().rolling(window, center=True, min_periods=window // 3).median()
        deviation = values - median
        with np.errstate(divide="ignore", invalid="ignore"):  # a flat neighbourhood (MAD 0): any jump is an outlier
            z = (0.6745 * deviation / mad).where(mad > 0, np.sign(deviation) * np.inf * (deviation != 0))
        hits = z.abs() > threshold
        found.append(pd.DataFrame({"minute": frame.index[hits], "feature": feature, "value": values[hits].to_numpy(),
                                   "rolling_median": median[hits].to_numpy(), "robust_z": z[hits].to_numpy()}))
    return pd.concat(found, ignore_index=True).sort_values("minute", ignore_index=True)


def plot_data_quality(report: DataQualityReport):
    """Both series with outliers marked, gaps shaded and late revisions ticked."""
    fig, axes = plt.subplots(len(OUTLIER_FEATURES), 1, figsize=(11, 5.5), sharex=True)
    revised = pd.to_datetime(report.revised["tx_minute"], utc=True)
    for ax, feature in zip(axes, OUTLIER_FEATURES):
        ax.plot(report.series.index, report.series[feature], lw=0.7, label=feature)
        marked = report.outliers[report.outliers["feature"] == feature]
        ax.scatter(marked["minute"], marked["value"], color="crimson", s=18, zorder=3, label="outlier")
        for gap in report.gaps.itertuples():
            ax.axvspan(gap.gap_start, gap.gap_end, color="grey", alpha=0.3, lw=0)
        ax.plot(revised, np.full(len(revised), report.series[feature].min()), "|", color="darkorange", ms=10,
                label="revised by late events")
        ax.set_ylabel(feature)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("minute (UTC)")
    axes[0].legend(loc="upper left", fontsize=8)
    axes[0].set_title(f"data quality: {int(report.gaps['minutes'].sum())} missing minutes (grey), "
                      f"{len(report.revised)} revised, {len(report.outliers)} outliers")
    fig.tight_layout()
    return fig

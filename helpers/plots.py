"""Figures the notebooks show. Matplotlib only; every time axis is UTC."""
from __future__ import annotations

import time

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import pandas as pd


def minutes_frame(records: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Feature records as a DataFrame indexed by the UTC window start, oldest first."""
    frame = pd.DataFrame(records)
    if frame.empty:
        return frame
    frame.index = pd.to_datetime(frame["window_start"], unit="s", utc=True)
    return frame.sort_index()


def plot_minutes(frame: pd.DataFrame, title: str, rolling: str = "60min"):
    """tx_count and avg_fee per minute, with a rolling mean to show the daily pattern."""
    fig, axes = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    for ax, column, label in ((axes[0], "tx_count", "transactions / minute"), (axes[1], "avg_fee", "avg fee (sat)")):
        if not frame.empty:
            ax.plot(frame.index, frame[column], lw=0.6, alpha=0.5, label="per minute")
            ax.plot(frame.index, frame[column].rolling(rolling).mean(), lw=1.6, label=f"rolling mean {rolling}")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left")
    axes[0].set_title(title)
    axes[1].set_xlabel("window start (UTC)")
    fig.tight_layout()
    return fig


def watch_stream(status_fn, minutes_fn, seconds: float = 60, refresh_s: float = 2.0):
    """Redraw a live figure for ``seconds``: events arriving in the log, and minutes landing online.

    ``status_fn()`` returns the stream's status (``log_events``: events in so far); ``minutes_fn()`` the latest
    feature records. A short watch refreshes faster, so that even a few seconds draw a line of arrival rates.
    """
    refresh_s = min(refresh_s, seconds / 8)
    from IPython.display import clear_output, display

    samples = []
    started = time.monotonic()
    while True:
        current = status_fn()
        samples.append((time.monotonic() - started, current.log_events))
        fig = _stream_figure(samples, minutes_frame(minutes_fn()))
        clear_output(wait=True)
        display(fig)
        plt.close(fig)
        if time.monotonic() - started >= seconds:
            return current
        time.sleep(refresh_s)


def _stream_figure(samples, frame: pd.DataFrame):
    fig, (rate_ax, count_ax, fee_ax) = plt.subplots(1, 3, figsize=(14, 3.6))
    arrivals = pd.DataFrame(samples, columns=["elapsed", "events"]).set_index("elapsed")
    rate = arrivals["events"].diff() / arrivals.index.to_series().diff()
    rate_ax.plot(rate.index, rate, marker="o", ms=3)
    rate_ax.set(title="events into the log", xlabel="seconds watched (wall clock)", ylabel="events / second")
    for ax, column, label in ((count_ax, "tx_count", "transactions / minute"), (fee_ax, "avg_fee", "avg fee (sat)")):
        if not frame.empty:
            ax.bar(frame.index, frame[column], width=1 / 1440, align="edge")
        ax.set(title="latest minutes online", xlabel="event time (UTC)", ylabel=label)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    for ax in (rate_ax, count_ax, fee_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_rolling(frame: pd.DataFrame, columns=("tx_count", "total_fee", "avg_fee"), window: str = "60min"):
    """Each column per minute, with its rolling mean and a ±1 standard deviation band."""
    fig, axes = plt.subplots(len(columns), 1, figsize=(11, 2.4 * len(columns)), sharex=True)
    for ax, column in zip(axes, columns):
        rolling = frame[column].rolling(window)
        mean, std = rolling.mean(), rolling.std()
        ax.plot(frame.index, frame[column], lw=0.5, alpha=0.5, label="per minute")
        ax.plot(frame.index, mean, lw=1.5, label=f"rolling mean {window}")
        ax.fill_between(frame.index, mean - std, mean + std, alpha=0.2, label="±1 std")
        ax.set_ylabel({"tx_count": "transactions / min", "total_fee": "total fee (sat)",
                       "avg_fee": "avg fee (sat)"}.get(column, column))
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("minute (UTC)")
    fig.tight_layout()
    return fig


def plot_forecast_fans(series: pd.Series, origins: list[int], forecast: dict, title: str, context: int = 90):
    """One panel per test window: recent actuals, what really happened, the median and 10-90 / 30-70 % bands."""
    n = len(origins)
    columns = min(4, n)
    fig, axes = plt.subplots((n + columns - 1) // columns, columns, figsize=(3.6 * columns, 2.6 * ((n + 3) // 4)),
                             sharey=True, squeeze=False)
    horizon = forecast["mean"].shape[1]
    for i, (ax, origin) in enumerate(zip(axes.flat, origins)):
        past = series.iloc[max(0, origin - context):origin]
        future = series.iloc[origin:origin + horizon]
        ax.plot(past.index, past, color="grey", lw=0.8, label="context (what the model saw)")
        ax.fill_between(future.index, forecast["0.1"][i], forecast["0.9"][i], color="tab:blue", alpha=0.2,
                        lw=0, label="forecast 10-90 %")
        ax.fill_between(future.index, forecast["0.3"][i], forecast["0.7"][i], color="tab:blue", alpha=0.35,
                        lw=0, label="forecast 30-70 %")
        ax.plot(future.index, forecast["0.5"][i], color="tab:orange", lw=1.8, label="forecast median")
        ax.plot(future.index, future, color="black", lw=1.0, label="actual")
        ax.xaxis.set_major_locator(mdates.MinuteLocator(byminute=[0, 30]))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.set_xlabel("UTC")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("avg fee (sat)")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)  # below, off the data
    return fig


def plot_live_forecast(history: pd.Series, prediction: dict, title: str, context: int = 180):
    """The last ``context`` minutes and an endpoint's forecast after them: median and 10-90 / 30-70 % bands."""
    quantiles = prediction["quantiles"]
    horizon = len(prediction["mean"])
    future = pd.date_range(history.index[-1] + pd.Timedelta(minutes=1), periods=horizon, freq="min")
    fig, ax = plt.subplots(figsize=(11, 3.6))
    recent = history.iloc[-context:]
    ax.plot(recent.index, recent, color="grey", lw=0.9, label="avg fee, last minutes")
    ax.fill_between(future, quantiles["0.1"], quantiles["0.9"], alpha=0.25, label="10-90 %")
    ax.fill_between(future, quantiles["0.3"], quantiles["0.7"], alpha=0.35, label="30-70 %")
    ax.plot(future, quantiles["0.5"], lw=1.4, label="median")
    ax.set(title=title, ylabel="avg fee (sat)", xlabel="minute (UTC)")
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def plot_monitoring(timeline: pd.DataFrame, alarm_history: pd.DataFrame, retrains: pd.DataFrame,
                    drift_at: pd.Timestamp | None = None):
    """The loop on one figure: wQL per hour and stage, the threshold, alarm periods, drift, retrains, deploys."""
    fig, ax = plt.subplots(figsize=(12, 4.5))
    ends = timeline["hour"].max() + pd.Timedelta(hours=1) if len(timeline) else None
    for stage, style, shade, width in (("prod", "-o", "tab:red", 2.0), ("staging", "--s", "tab:blue", 1.2)):
        hours = timeline[timeline["stage"] == stage]
        ax.plot(hours["hour"] + pd.Timedelta(minutes=30), hours["wql"], style, color=shade, lw=width, ms=4,
                mfc="white" if stage == "staging" else shade, label=f"{stage} wQL")
        transitions = alarm_history[alarm_history["name"].str.endswith(stage)]
        for (_, t), (_, after) in zip(transitions.iterrows(), list(transitions.iloc[1:].iterrows()) + [(None, None)]):
            if t["new_state"] == "ALARM":
                ax.axvspan(t["at"], after["at"] if after is not None else ends, color=shade, alpha=0.12,
                           label=f"{stage} alarm in ALARM")
    threshold = timeline.groupby("hour")["threshold"].max()
    ax.step(threshold.index, threshold.to_numpy(), where="post", color="black", lw=1, label="threshold")
    started = retrains[retrains["status"] != "Skipped"]
    for _, retrain in started.dropna(subset=["requested_sim"]).iterrows():
        outcome = {"Deployed": ("tab:green", "retrain started (deployed)"),
                   "FailedQualityGate": ("tab:gray", "retrain started (rejected by the gate)")}.get(
            retrain["status"], ("tab:purple", f"retrain started ({retrain['status']})"))
        ax.axvline(retrain["requested_sim"], color=outcome[0], ls=":", lw=1.5, label=outcome[1])
    for i, at in enumerate(retrains.loc[retrains["status"] == "Deployed", "ended_sim"].dropna()):
        ax.axvline(at, color="tab:green", lw=2, label="retrained model deployed" if i == 0 else None)
    if drift_at is not None:
        ax.axvline(drift_at, color="tab:brown", lw=2, ls="--", label="fee drift injected")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set(title="Hourly monitoring: mean wQL of each endpoint's own forecasts", xlabel="event time (UTC)",
           ylabel="mean wQL (lower is better)")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig

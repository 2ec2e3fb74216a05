"""The game day's timeline (timeline.png): requests per second by executing region, client errors, each
fault shaded and labelled from injection to heal, the marks, and replication lag p50/p99/max per pair.

Requests and errors are binned at the same resolution (``BIN`` seconds, bars from their bin's left
edge), so an error is never drawn before the mark of the fault that caused it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meridian_local.load import Sample

BIN = 0.5  # seconds
COLOURS = {"region-loss": "tab:orange", "hard-region-loss": "tab:red", "partition": "tab:purple", "conflicts": "tab:brown"}


def plot(samples: list[Sample], marks: list[tuple[float, str]], windows: list[dict[str, Any]], lag: dict[str, dict[str, Any]],
         path: Path, *, started: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    end = max([s.at - started for s in samples] + [at - started for at, _ in marks] + [BIN])
    bins = np.arange(0.0, end + BIN, BIN)
    fig, (top, bottom, lag_ax) = plt.subplots(3, 1, figsize=(13, 8.5), gridspec_kw={"height_ratios": [3, 1, 1.6]})
    bottom.sharex(top)
    for region in sorted({s.executed for s in samples if s.executed != "?"}):
        times = [s.at - started for s in samples if s.executed == region and s.status < 500]
        counts, _ = np.histogram(times, bins=bins)
        top.step(bins[:-1], counts / BIN, where="post", label=f"executed in {region}")
    errors = [s.at - started for s in samples if s.status >= 500]
    seen = [s.at - started for s in samples if s.status >= 500 and s.final]
    err_counts, _ = np.histogram(errors, bins=bins)
    seen_counts, _ = np.histogram(seen, bins=bins)
    bottom.bar(bins[:-1], err_counts / BIN, width=BIN, align="edge", color="tab:red", alpha=0.45, label="5xx / no answer (any attempt)")
    bottom.bar(bins[:-1], seen_counts / BIN, width=BIN, align="edge", color="darkred", label="seen by the client (after retry)")
    for w in windows:
        fault, heal = float(w["fault_at"]), float(w["heal_at"])
        colour = COLOURS.get(str(w["scenario"]), "grey")
        for ax in (top, bottom):
            ax.axvspan(fault, heal, color=colour, alpha=0.12)
        top.text((fault + heal) / 2, 1.01, str(w["scenario"]), transform=top.get_xaxis_transform(), ha="center", va="bottom",
                 fontsize=8, color=colour, fontweight="bold")
    for at, label in marks:
        x = at - started
        for ax in (top, bottom):
            ax.axvline(x, color="grey", linestyle="--", linewidth=0.7)
        top.annotate(label, (x, 0.97), xycoords=("data", "axes fraction"), rotation=90, fontsize=7, va="top", ha="right",
                     bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    top.set_ylim(bottom=0)
    top.set_ylabel("requests / s")
    top.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top.set_title("Meridian game day: requests per second by executing region", pad=16)
    bottom.set_ylabel("errors / s")
    bottom.set_xlabel(f"seconds since start ({BIN:g} s bins)")
    bottom.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    pairs = list(lag)
    if pairs:
        ticks = np.arange(len(pairs))
        for i, (stat, colour) in enumerate((("p50", "tab:blue"), ("p99", "tab:orange"), ("max", "tab:red"))):
            lag_ax.bar(ticks + (i - 1) * 0.27, [lag[p][stat] for p in pairs], width=0.27, color=colour, label=stat)
        lag_ax.set_xticks(ticks, [p.replace("->", " -> ") for p in pairs], fontsize=6, rotation=15, ha="right")
        lag_ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        lag_ax.set_yscale("log")  # p50 is hundreds of ms; deliveries held across a fault reach seconds
    lag_ax.set_ylabel("replication lag, ms (log)")
    lag_ax.set_title("replication lag per region pair (last deliveries)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

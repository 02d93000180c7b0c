"""Plots for the results report (matplotlib, Agg backend: no display on the training machines).

Each plot function returns a PlotResult; when the runs lack the data a plot needs (older runs without
instrumentation, no metrics.jsonl) it returns path=None with a note that the report prints instead.
"""
from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from bnexp.report.aggregation import GroupStats, final_accuracies  # noqa: E402
from bnexp.report.run_records import RunRecord, group_by  # noqa: E402
from bnexp.report.series import runs_at_lr, runs_by_series, series_labeller  # noqa: E402
from bnexp.report.trainable_lr import ALL_CHANNELS, NO_NORM, LargestTrainableLr  # noqa: E402
from bnexp.runs.files import as_float  # noqa: E402

LAYER_PREFIX = "grad_norm/"
GLOBAL_KEY = "grad_norm/global"


@dataclass
class PlotResult:
    title: str
    path: Path | None
    caption: str = ""
    note: str = ""

    def markdown(self, missing: str = "Skipped") -> list[str]:
        """The plot's subsection of the report; `missing` words a plot that was not drawn."""
        if self.path is None:
            return [f"### {self.title}", "", f"_{missing}: {self.note}_", ""]
        return [f"### {self.title}", "", self.caption, "", f"![{self.title}]({self.path.name})", ""]


def never_raises(title: str):
    """A plot that fails on data it did not foresee becomes a note in the report instead of ending the report."""
    def decorate(plot_function):
        @functools.wraps(plot_function)
        def plot_or_note(*args, **kwargs) -> PlotResult:
            try:
                return plot_function(*args, **kwargs)
            except Exception as error:
                plt.close("all")
                return PlotResult(title, None, note=f"could not be drawn ({type(error).__name__}: {error})")
        return plot_or_note
    return decorate


def series_colors(names: list[str]) -> dict[str, Any]:
    """One colour per series name, in order (the report's plots share the palette)."""
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: palette(i % palette.N) for i, name in enumerate(names)}


def save_figure(figure, path: Path) -> Path:
    """Lay the figure out, write it as the report's plots are written (110 dpi) and close it."""
    if figure.get_layout_engine() is None:  # a figure made with a layout (constrained) lays itself out
        figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _seed_offsets(count: int, spread: float = 0.04) -> np.ndarray:
    """Multiplicative x offsets (log axis) that spread a group's seed points so that equal values stay visible."""
    if count <= 1:
        return np.ones(count)
    return 10 ** np.linspace(-spread, spread, count)


@never_raises("Test accuracy vs learning rate")
def plot_accuracy_vs_lr(groups: list[GroupStats], out_dir: Path, min_acc: float | None = None) -> PlotResult:
    title = "Test accuracy vs learning rate"
    series = group_by(groups, series_labeller(groups))
    if not series:
        return PlotResult(title, None, note="no runs with an lr")
    if not any(math.isfinite(g.values["final_test_acc_mean"]) or g.values["n_diverged"] for g in groups):
        return PlotResult(title, None, note="no run has finished or diverged yet: no accuracy to plot")
    method = next((g.values.get("interval") for g in groups if g.values.get("interval")), "t")
    method_name = {"t": "Student-t", "bootstrap": "bootstrap"}.get(method, method)
    colors = series_colors(list(series))
    figure, axes = plt.subplots(figsize=(8, 5))
    marked_diverged = False
    # each series' seed points sit slightly apart on x, so that series at the same lr do not hide each other
    series_shift = _seed_offsets(len(series), spread=0.03)
    for (name, members), shift in zip(series.items(), series_shift):
        members = sorted(members, key=lambda g: g.lr)
        lrs = np.array([g.lr for g in members])
        means = np.array([100 * g.values["final_test_acc_mean"] for g in members])
        lows = np.array([100 * g.values.get("final_test_acc_ci_low", math.nan) for g in members])
        highs = np.array([100 * g.values.get("final_test_acc_ci_high", math.nan) for g in members])
        # asymmetric bars: a bootstrap interval need not be centred on the mean; no bar where n < 2
        yerr = np.vstack([np.nan_to_num(means - lows), np.nan_to_num(highs - means)])
        axes.errorbar(lrs * shift, means, yerr=yerr, marker="o", ms=4, capsize=3, color=colors[name],
                      label=name, zorder=3)
        for group, mean in zip(members, means):
            seeds = [100 * a for a in final_accuracies(group.runs)]
            axes.scatter(group.lr * shift * _seed_offsets(len(seeds), spread=0.015), seeds, s=9,
                         color=colors[name], alpha=0.45, edgecolors="none", zorder=2)
            if group.values["n_diverged"] > 0:
                # Diverged seeds: a red x at the mean of the surviving seeds, or on the floor when none survived.
                axes.scatter([group.lr * shift], [0.0 if math.isnan(mean) else mean], marker="x", s=70,
                             color="red", zorder=5, label=None if marked_diverged else "≥1 seed diverged")
                marked_diverged = True
    if min_acc is not None:
        axes.axhline(100 * min_acc, color="grey", ls=":", lw=1, label=f"{100 * min_acc:g}%: counts as training")
    axes.set(xscale="log", xlabel="learning rate", ylabel="final test accuracy (%)", ylim=(0, None),
             title=f"mean with 95% {method_name} interval over non-diverged seeds; dots: single seeds")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    path = save_figure(figure, out_dir / "acc_vs_lr.png")
    return PlotResult(title, path, f"One line per variant: the mean final test accuracy over the seeds that "
                                   f"finished, with its 95% {method_name} interval as error bar (none for a "
                                   "single seed); the faint dots are the seeds themselves, and each variant is nudged "
                                   "sideways a little so that variants at the same lr do not hide each other. Red × "
                                   "marks an lr where at least one seed diverged (on the x axis when every seed "
                                   "diverged).")


@never_raises("Training loss")
def plot_loss_curves(runs: list[RunRecord], lr: float | None, out_dir: Path) -> PlotResult:
    title = f"Training loss at lr={lr:g}" if lr is not None else "Training loss"
    curves: dict[str, list[tuple[np.ndarray, np.ndarray, str]]] = {}
    for variant, members in runs_at_lr(runs, lr).items():
        for run in members:
            points = [(r["step"], as_float(r.get("train/loss"))) for r in run.step_records]
            points = [(s, v) for s, v in points if v is not None and math.isfinite(v) and v > 0]
            if points:
                steps, losses = map(np.array, zip(*sorted(points)))
                curves.setdefault(variant, []).append((steps, losses, run.status))
    if not curves:
        return PlotResult(title, None, note=f"no `train/loss` step records in metrics.jsonl at lr={lr}")
    colors = series_colors(list(curves))
    figure, axes = plt.subplots(figsize=(8, 5))
    for variant, lines in curves.items():
        for index, (steps, losses, status) in enumerate(lines):
            axes.plot(steps, losses, color=colors[variant], alpha=0.8, lw=1.2,
                      ls="--" if status == "diverged" else "-", label=variant if index == 0 else None)
            if status == "diverged":
                axes.scatter([steps[-1]], [losses[-1]], marker="x", color="red", zorder=5)
    finite = np.concatenate([losses for lines in curves.values() for _, losses, _ in lines])
    if finite.max() / finite.min() > 10:  # log only when the losses span orders of magnitude (a divergence)
        axes.set_yscale("log")
    axes.set(xlabel="step", ylabel="training loss",
             title=f"lr={lr:g}; one line per seed, dashed + red × = diverged")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    path = save_figure(figure, out_dir / f"loss_curves_lr{lr:g}.png")
    return PlotResult(title, path, "Per-step training loss of every seed, one colour per variant.")


def _layer_grad_norms(record: dict) -> dict[str, Any]:
    """A record's per-layer `grad_norm/<layer>` values by layer name (not `grad_norm/global`)."""
    return {key[len(LAYER_PREFIX):]: value for key, value in record.items()
            if key.startswith(LAYER_PREFIX) and key != GLOBAL_KEY}


def _cell_edges(steps: list[int]) -> np.ndarray:
    centres = np.asarray(steps, dtype=float)
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    middles = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[centres[0] - (middles[0] - centres[0])], middles,
                           [centres[-1] + (centres[-1] - middles[-1])]])


def log_grad_norm_matrix(records: list[dict], layers: list[str]) -> np.ndarray:
    """log10 grad norm, layers x records: NaN where a value is missing, -inf where it is exactly zero.

    An exactly-zero norm means the network died (no gradient reaches the layer); the heatmap draws it
    black rather than blank, so it is not mistaken for a missing measurement.
    """
    # as_float's None (missing, or not a number) becomes NaN in a float array
    matrix = np.array([[as_float(record.get(LAYER_PREFIX + layer)) for record in records] for layer in layers],
                      dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.where(matrix >= 0, matrix, np.nan))


@never_raises("Per-layer gradient norm")
def plot_grad_norm_heatmaps(runs: list[RunRecord], lr: float | None, out_dir: Path) -> PlotResult:
    title = f"Per-layer gradient norm over training at lr={lr:g}" if lr is not None else "Per-layer gradient norm"
    panels = []
    for variant, members in runs_at_lr(runs, lr).items():
        for run in members:  # the lowest seed that has per-layer records
            records = run.step_records
            layers = list(dict.fromkeys(layer for record in records for layer in _layer_grad_norms(record)))
            if layers:
                records = [r for r in records if any(LAYER_PREFIX + n in r for n in layers)]
                steps = [r["step"] for r in records]
                matrix = log_grad_norm_matrix(records, layers)
                panels.append((variant, run.seed, layers, steps, matrix))
                break
    if not panels:
        return PlotResult(title, None, note="no per-layer `grad_norm/<layer>` keys in metrics.jsonl "
                                            "(runs without instrumentation)")
    finite = np.concatenate([p[4][np.isfinite(p[4])] for p in panels])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    colormap = matplotlib.colormaps["viridis"].with_extremes(under="black")
    n_layers = max(len(p[2]) for p in panels)
    figure, axes_list = plt.subplots(len(panels), 1, squeeze=False, sharex=True, layout="constrained",
                                     figsize=(10, max(2.0, 0.18 * n_layers + 1.0) * len(panels)))
    for axes, (variant, seed, layers, steps, matrix) in zip(axes_list[:, 0], panels):
        # pcolormesh with cell edges between logged steps: honest x positions even if the logging interval varies
        below_scale = np.where(np.isneginf(matrix), vmin - 1.0, matrix)
        image = axes.pcolormesh(_cell_edges(steps), np.arange(len(layers) + 1) - 0.5,
                                np.ma.masked_invalid(below_scale), cmap=colormap, vmin=vmin, vmax=vmax,
                                shading="flat")
        axes.set_ylim(len(layers) - 0.5, -0.5)  # first layer on top, in model order
        axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes.set_yticks(range(len(layers)))
        axes.set_yticklabels(layers, fontsize=max(4, 8 - n_layers // 15))
        axes.set_title(f"{variant} (seed {seed})", fontsize=9)
    axes_list[-1, 0].set_xlabel("step")
    figure.colorbar(image, ax=axes_list[:, 0].tolist(), label="log10 grad norm", shrink=0.8)
    return PlotResult(title, save_figure(figure, out_dir / f"grad_norm_heatmap_lr{lr:g}.png"),
                      "log10 of each layer's gradient norm (rows, in model order) over logged steps; one panel "
                      "per variant, shared colour scale. Black: exactly zero gradient (the network died); "
                      "blank: nothing logged (after a divergence).")


def _init_grad_norms(run: RunRecord) -> dict[str, float]:
    norms = run.summary.get("init_grad_norms")
    if not (isinstance(norms, dict) and norms):  # the step-0 record, as a fallback for older summaries
        records = run.step_records
        norms = _layer_grad_norms(min(records, key=lambda r: r["step"])) if records else {}
    return {layer: value for layer, value in ((layer, as_float(v)) for layer, v in norms.items()) if value is not None}


@never_raises("Per-layer gradient norm at initialisation")
def plot_init_grad_norms(runs: list[RunRecord], out_dir: Path) -> PlotResult:
    title = "Per-layer gradient norm at initialisation"
    per_variant: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for series, members in runs_by_series(runs).items():
        for run in members:
            for layer, value in _init_grad_norms(run).items():
                per_variant[series][layer].append(value)
    if not per_variant:
        return PlotResult(title, None, note="no `init_grad_norms` in summary.json and no per-layer grad norms in "
                                            "the first metrics record")
    layers = list(dict.fromkeys(layer for norms in per_variant.values() for layer in norms))
    variants = list(per_variant)
    colors = series_colors(variants)
    figure, axes = plt.subplots(figsize=(max(8, 0.3 * len(layers) + 3), 5))
    for variant in variants:
        # only the layers this variant has (no_bn has no norm layers), joined by one line
        present = [(i, float(np.mean(per_variant[variant][layer]))) for i, layer in enumerate(layers)
                   if per_variant[variant].get(layer)]
        xs, ys = zip(*present)
        axes.plot(xs, ys, marker="o", ms=4, color=colors[variant], label=variant)
    axes.set(yscale="log", xticks=range(len(layers)), ylabel="grad norm at init (mean over runs)")
    axes.set_xticklabels(layers, rotation=70, ha="right", fontsize=7)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    path = save_figure(figure, out_dir / "init_grad_norms.png")
    return PlotResult(title, path, "Gradient norm of each layer at the first step, averaged over every run of "
                                   "the variant (all lrs and seeds: at initialisation the lr has not acted yet).")


def _channel_axis_order(found: list[LargestTrainableLr]) -> list[int | str]:
    sizes = sorted({item.channels_per_statistic for item in found if isinstance(item.channels_per_statistic, int)})
    return [*sizes, *(c for c in (ALL_CHANNELS, NO_NORM) if any(item.channels_per_statistic == c for item in found))]


@never_raises("Largest trainable learning rate vs channels per statistic")
def plot_largest_trainable_lr(found: list[LargestTrainableLr], out_dir: Path) -> PlotResult:
    """The largest trainable lr against the channels one statistic pools, the bracket drawn as a bar up to the first
    lr that does not train."""
    title = "Largest trainable learning rate vs channels per statistic"
    placed = [item for item in found if item.channels_per_statistic is not None]
    if not placed:
        return PlotResult(title, None, note="no variant with a known number of channels per statistic "
                                            "(per-channel, channels_per_group, one statistic per layer or no norm)")
    order = _channel_axis_order(placed)
    position = {value: index for index, value in enumerate(order)}
    names = list(map(series_labeller(placed), placed))
    colors = series_colors(names)
    figure, axes = plt.subplots(figsize=(8, 5))
    at_position: dict[int, int] = defaultdict(int)
    floor_lr = min(lr for item in placed for lr in item.lrs_tried)
    for item, name in zip(placed, names):
        x = position[item.channels_per_statistic]
        x_shifted = x + 0.12 * at_position[x]  # variants sharing a column (e.g. two with one statistic) side by side
        at_position[x] += 1
        marker = "s" if item.channels_per_statistic == NO_NORM else "o"
        low, high = item.largest_trainable_lr, item.first_failing_lr
        if low is None:  # nothing trained: the bar runs up to the lowest lr that failed
            axes.scatter([x_shifted], [high], marker="v", s=60, color=colors[name], label=f"{name} (none trains)")
            continue
        axes.scatter([x_shifted], [low], marker=marker, s=50, color=colors[name], zorder=3,
                     label=name + (" (no norm)" if item.channels_per_statistic == NO_NORM else ""))
        if high is not None:
            axes.vlines(x_shifted, low, high, color=colors[name], lw=2, alpha=0.6)
            axes.scatter([x_shifted], [high], marker="_", s=120, color=colors[name])
        else:  # trained at every lr tried: only a lower bound
            axes.annotate("", xy=(x_shifted, low * 1.6), xytext=(x_shifted, low),
                          arrowprops={"arrowstyle": "->", "color": colors[name]})
    if NO_NORM in position:
        axes.axvline(position[NO_NORM] - 0.5, color="grey", lw=0.8, ls=":")
    axes.set(yscale="log", ylim=(floor_lr / 2, None), xticks=range(len(order)),
             xticklabels=[str(value) for value in order], ylabel="learning rate",
             xlabel="channels per statistic (1 = per-channel, all = one statistic per layer)",
             title="marker: largest trainable lr; bar up to the first lr that does not train")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    path = save_figure(figure, out_dir / "largest_trainable_lr.png")
    left_out = [item.variant for item in found if item.channels_per_statistic is None]
    caption = ("Per variant, the largest lr at which every seed trained (marker) and the bracket up to the first "
               "lr at which one did not (bar end); an arrow means it trained at every lr tried, a ▽ that none "
               "trained (at the lowest lr that failed). No normalisation stands apart, right of the dotted line.")
    if left_out:
        caption += (f" Not shown: {', '.join(left_out)} (a fixed group count pools a different number of "
                    "channels in layers of different widths).")
    return PlotResult(title, path, caption)

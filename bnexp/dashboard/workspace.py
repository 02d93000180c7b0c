"""W&B dashboards as code: the comparison workspace, and a report for one study, from the keys the trainer logs.

    python -m bnexp.dashboard --entity my-team --project bnexp            # create the comparison workspace
    python -m bnexp.dashboard --project bnexp --lr 0.4                     # the same, filtered to one lr
    python -m bnexp.dashboard --project bnexp --tag lr_stability --report  # also a report for one study
    python -m bnexp.dashboard --project bnexp --dry-run --out dashboard.json   # no network: write the spec
    python -m bnexp.dashboard --runs outputs/sweeps/cpu_study --preview results/dashboard/preview.png

The dashboard is first a plain spec (sections of panels, each naming the logged keys, regexes, summary fields and
config keys it plots, plus the grouping), written by --dry-run as JSON; `build_workspace` and `build_report` turn it
into wandb-workspaces objects, and only saving them needs the network. tests/dashboard/test_dashboard.py checks every key
of the spec against what a real run logs to W&B. This is the only module that imports wandb-workspaces;
bnexp/dashboard/spec.py holds the spec's types; bnexp/dashboard/preview.py draws the same panels locally (--preview).
"""
from __future__ import annotations

import argparse
import re
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from bnexp.config.compose import CONF_DIR, default_instrument_cfg
from bnexp.report.records import aggregate, discover_runs, largest_stable_lrs, variant_sort_key
from bnexp.config.keys import config_value
from bnexp.dashboard.spec import (
    DashboardError, DashboardSpec, Grouping, Key, Panel, ReportSpec, Section, config, history, summary)

SPEC_FORMAT = "bnexp-dashboard/1"
DEFAULT_PROJECT = "bnexp"
DEFAULT_WORKSPACE_NAME = "bnexp: variant comparison"
DEFAULT_TIMEOUT_S = 120.0
# W&B draws only the first max_runs runs (or groups) of a workspace panel, 10 by default; a full lr_stability
# grid is 168 runs.
MAX_RUNS_PER_PANEL = 200
DRY_RUN_HINT = "to build the dashboard without W&B, run with --dry-run --out dashboard.json"


# Regexes are anchored and use only syntax that Python and JavaScript (the W&B app) read alike.
LAYER_GRAD_NORM_REGEX = r"^grad_norm/(?!global$).+$"
LAYER_UPDATE_RATIO_REGEX = r"^update_ratio/(?!global$).+$"
BN_VAR_MEAN_REGEX = r"^bn/.+/var_mean$"
BN_MEAN_MAX_REGEX = r"^bn/.+/mean_max$"
BN_RUNNING_MEAN_GAP_REGEX = r"^bn/.+/running_mean_gap$"
BN_RUNNING_VAR_LOGRATIO_REGEX = r"^bn/.+/running_var_logratio$"
ACT_RMS_REGEX = r"^act/.+/rms$"

LR_KEY = config("optim.lr")


def _about_markdown(grouping: Grouping) -> str:
    rows = []  # each variant with the first comment line of its conf/variant/<name>.yaml, in the report's order
    for path in sorted((CONF_DIR / "variant").glob("*.yaml"), key=lambda path: variant_sort_key(path.stem)):
        comments = (line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#"))
        rows.append(f"| `{path.stem}` | {next(comments, '')} |")
    lr_text = (f"Only runs at lr {grouping.lr_filter:g}." if grouping.lr_filter is not None else
               "One line per variant *and* lr." if grouping.split_by_lr else
               "All lrs pooled: filter or group by the `optim.lr` column of the runs table to compare one lr.")
    return (
        "### What does BatchNorm's per-channel statistic buy you?\n"
        "The same CNN trained with per-channel, grouped, shared or no normalisation statistics. Each line is one "
        "variant (the run group; grouped BN also split by `variant.stat_groups`), the mean over its runs with a "
        f"min–max band over seeds. {lr_text}\n\n"
        "| variant | what it normalises with |\n|---|---|\n" + "\n".join(rows) + "\n\n"
        "Sections run from outcome to cause: accuracy, loss, gradient norms, update ratios, the norm layers' "
        "input statistics, activation RMS, and a summary per run.")


def _stable_lr_markdown(runs: list | None) -> str:
    title = "**Max stable lr per variant**: the largest lr at which every seed finished without diverging.\n\n"
    if not runs:
        return title + (
            "W&B panels cannot compute this across runs. `python -m bnexp.report <sweep dir> --out results/<study>` "
            "writes it (stable_lr.csv), and `python -m bnexp.dashboard --runs <sweep dir>` puts the table here. "
            "Until then read it off the diverged-step panel: a variant's limit lies below its lowest diverged lr.")
    from bnexp.report.markdown_tables import stable_markdown

    show_model = len({run.model for run in runs}) > 1
    return title + stable_markdown(largest_stable_lrs(aggregate(runs)), show_model) + (
        f"\n\nFrom {len(runs)} local run dirs when this dashboard was built; `python -m bnexp.report` recomputes it.")


def run_table_columns() -> list[Key]:
    """The runs table: what a reader compares across runs; steps_to_acc's targets as conf/instrument sets them."""
    acc_targets = default_instrument_cfg()["acc_targets"]
    return ([summary("status"), LR_KEY, config("seed"), summary("best_test_acc"), summary("final_test_acc"),
             summary("max_grad_norm"), summary("max_grad_norm_layer"), summary("max_global_grad_norm")]
            + [summary(f"steps_to_acc.{float(target)}") for target in acc_targets]
            + [summary("loss_spikes"), summary("diverged_step")])


def build_sections(grouping: Grouping, runs: list | None = None) -> list[Section]:
    step, epoch = history("step"), history("epoch")
    return [
        Section("About these runs", "step", [Panel("markdown", "The variants", markdown=_about_markdown(grouping))],
                pinned=True),
        Section("Accuracy", "epoch", [
            Panel("line", "Test accuracy per epoch: higher is better; a line stuck at 0.10 is chance (dead or "
                          "diverged)", x=epoch, y=[history("test/acc")]),
            Panel("line", "Train accuracy per epoch: far above test = overfitting; both flat = not training",
                  x=epoch, y=[history("train/acc")]),
        ]),
        Section("Loss", "step", [
            Panel("line", "Training loss (log y): a smooth fall is healthy; jumps up, or a line that ends early "
                          "(diverged), mark instability", x=step, y=[history("train/loss")], log_y=True),
            Panel("line", "Loss spikes so far (loss above k x its running median): a staircase = repeated "
                          "instability", x=step, y=[history("train/loss_spikes")]),
        ]),
        Section("Gradient norms", "step", [
            Panel("line", "Global gradient norm (log y): a climb by decades = explosion; a fall toward 0 = the "
                          "network died", x=step, y=[history("grad_norm/global")], log_y=True),
            Panel("line", "Gradient norm per layer (log y): the layer that leaves the pack first is where "
                          "instability starts", x=step, regex=LAYER_GRAD_NORM_REGEX, log_y=True),
        ]),
        Section("Update ratios", "step", [
            Panel("line", "Update ratio ||dw||/||w||, all weights (log y): about 1e-3 is healthy; near 1 a step "
                          "rewrites the weights", x=step, y=[history("update_ratio/global")], log_y=True),
            Panel("line", "Update ratio per layer (log y): a layer far above the rest takes steps too large for "
                          "its scale", x=step, regex=LAYER_UPDATE_RATIO_REGEX, log_y=True),
        ]),
        Section("BatchNorm statistics", "step", [
            Panel("line", "Batch variance at each norm input, mean over channels (log y): growth by decades = "
                          "activations blowing up before they are normalised", x=step, regex=BN_VAR_MEAN_REGEX,
                  log_y=True),
            Panel("line", "Largest channel mean at each norm input: channels drifting apart is what one shared "
                          "statistic cannot follow", x=step, regex=BN_MEAN_MAX_REGEX),
            Panel("line", "Running mean vs batch mean gap: large = the eval-time statistics miss the training "
                          "batches (test accuracy suffers)", x=step, regex=BN_RUNNING_MEAN_GAP_REGEX),
            Panel("line", "log(running var / batch var): far from 0 = the running variance lags the batches",
                  x=step, regex=BN_RUNNING_VAR_LOGRATIO_REGEX),
        ]),
        Section("Activation RMS", "step", [
            Panel("line", "Activation RMS per layer (log y): about 1 after a norm layer; conv outputs growing by "
                          "decades = blow-up, shrinking to 0 = a dying signal", x=step, regex=ACT_RMS_REGEX,
                  log_y=True),
        ]),
        Section("Summary per run", "step", [
            Panel("scatter", "Best test accuracy vs lr, one point per run: the variant that keeps high points at "
                             "large lr is the stable one", x=LR_KEY, y=[summary("best_test_acc")], log_x=True),
            Panel("scatter", "Peak global gradient norm vs lr (log-log): points shooting up mark where a variant "
                             "turns unstable", x=LR_KEY, y=[summary("max_global_grad_norm")], log_x=True,
                  log_y=True),
            Panel("scatter", "Step at which a run diverged, vs lr: every point is a diverged run", x=LR_KEY,
                  y=[summary("diverged_step")], log_x=True),
            Panel("markdown", "Max stable lr per variant", markdown=_stable_lr_markdown(runs)),
            Panel("runs_table", "Runs table: status, best accuracy, largest gradient norm and its layer, steps to "
                                "each accuracy target, loss spikes", columns=run_table_columns()),
        ]),
    ]


def _grid_sentence(variants: list[str], lrs: list[float], seeds: list[int]) -> str:
    return (f"{len(variants)} variants ({', '.join(variants)}) x {len(lrs)} lrs "
            f"({', '.join(f'{float(lr):g}' for lr in lrs)}) x {len(seeds)} seeds")


def _describe_grid(runs: list | None, sweep_name: str) -> tuple[str, str]:
    """(grid, data source) sentences for the report: from local run dirs if given, else the sweep config that the
    study's tag or group names (conf/sweep/<sweep_name>.yaml), if there is one."""
    if runs:
        from bnexp.report.sections import describe_data_sources

        grid = _grid_sentence(sorted({run.variant for run in runs}, key=variant_sort_key),
                              sorted({run.lr for run in runs}),
                              sorted({run.seed for run in runs if run.seed is not None}))
        models = ", ".join(sorted({run.model for run in runs}))
        return f"{grid} on {models}: {len(runs)} local run dirs.", "\n".join(describe_data_sources(runs))
    sweep_file = CONF_DIR / "sweep" / f"{sweep_name}.yaml"
    if sweep_name and re.fullmatch(r"[\w.-]+", sweep_name) and sweep_file.is_file():
        from omegaconf import OmegaConf

        sweep = OmegaConf.load(sweep_file)
        data = [o for o in (sweep.train_overrides or []) if str(o).startswith("data")] or ["data=cifar10 (default)"]
        grid = f"`conf/sweep/{sweep_name}.yaml`: {_grid_sentence(list(sweep.variants), sweep.lrs, sweep.seeds)}."
        return grid, "Data: " + ", ".join(f"`{o}`" for o in data) + " (the runs' `data_source` summary field says "\
            "which copy each used)."
    return ("As logged: the runs table lists each run's variant, lr and seed.",
            "Each run's `data_source` summary field names its data (original CIFAR-10, the JPEG copy or synthetic).")


def build_spec(project: str = DEFAULT_PROJECT, entity: str | None = None, name: str = DEFAULT_WORKSPACE_NAME,
               lr_filter: float | None = None, split_by_lr: bool = False, runs: list | None = None,
               report_filter: dict[str, str] | None = None, report_title: str | None = None,
               local_report: str | None = None) -> DashboardSpec:
    # The sink sets a run's group to variant.name; grouped BN runs differ only in stat_groups, hence the second key.
    grouping = Grouping([Key("run", "group"), config("variant.stat_groups")], mirrors={"group": "variant.name"},
                        lr_key=LR_KEY, lr_filter=lr_filter, split_by_lr=split_by_lr)
    sections = build_sections(grouping, runs)
    report = None
    if report_filter is not None:
        (kind, value), = report_filter.items()
        study = value if kind != "sweep" else f"sweep-{value}"
        grid, data = _describe_grid(runs, "" if kind == "sweep" else value)
        local = local_report or f"results/{study}"
        text = (f"Runs of {project} with {kind} `{value}`, one line per variant (min–max band over seeds).\n\n"
                f"**Grid.** {grid}\n\n**Data.** {data}\n\n"
                f"**Local report.** `python -m bnexp.report <sweep dir> --out {local}` writes `{local}/report.md`: "
                "tables per variant x lr, the max stable lr, and the same plots from the local run dirs.")
        report = ReportSpec(title=report_title or f"bnexp study: {study}", filter=dict(report_filter), text=text,
                            sections=[section.name for section in sections if not section.pinned])
    return DashboardSpec(SPEC_FORMAT, project, entity, name, grouping, sections, report)


# ----------------------------------------------------------------------------------------------------------------
# Checking a spec against what a run logged
# ----------------------------------------------------------------------------------------------------------------

def flatten_keys(mapping: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of every leaf and inner node of a nested dict (W&B shows nested summary/config dotted)."""
    keys = set()
    for name, value in mapping.items():
        dotted = f"{prefix}{name}"
        keys.add(dotted)
        if isinstance(value, dict):
            keys |= flatten_keys(value, dotted + ".")
    return keys


def missing_keys(spec: DashboardSpec, history_keys: set[str], summary_keys: set[str], config: dict[str, Any],
                 run_attributes: dict[str, Any]) -> list[str]:
    """Every key, regex and grouping key of the spec that the given run does not have; [] when all are there."""
    known = {"history": history_keys, "summary": summary_keys, "config": flatten_keys(config)}
    problems = []

    def check(key: Key, where: str) -> None:
        if key.source == "run":
            if run_attributes.get(key.name) in (None, ""):
                problems.append(f"{where}: run attribute {key.name!r} is not set")
        elif key.name not in known[key.source]:
            problems.append(f"{where}: {key.source} key {key.name!r} was not logged")

    for section in spec.sections:
        check(history(section.x_axis), f"section {section.name!r} x axis")
        for panel in section.panels:
            where = f"{section.name} / {panel.title[:40]!r}"
            for key in ([panel.x] if panel.x else []) + panel.y + panel.columns:
                check(key, where)
            if panel.regex and not any(re.search(panel.regex, name) for name in history_keys):
                problems.append(f"{where}: regex {panel.regex!r} matches no logged key")
    for key in spec.grouping.keys + [spec.grouping.lr_key]:
        check(key, "grouping")
    for attribute, config_key in spec.grouping.mirrors.items():
        if run_attributes.get(attribute) != config_value(config, config_key):
            problems.append(f"grouping: run {attribute} {run_attributes.get(attribute)!r} is not config "
                            f"{config_key} {config_value(config, config_key)!r}")
    return problems


# ----------------------------------------------------------------------------------------------------------------
# wandb-workspaces objects
# ----------------------------------------------------------------------------------------------------------------

def _column_name(key: Key) -> str:
    """The runs-table accessor W&B uses: summary:<dotted>, run:<attr>, config:<first>.value.<rest>."""
    if key.source == "config":
        first, _, rest = key.name.partition(".")
        return f"config:{first}.value" + (f".{rest}" if rest else "")
    return f"{key.source}:{key.name}"


def _wr_metric(key: Key, wr: Any) -> Any:
    return {"history": wr.Metric, "summary": wr.SummaryMetric, "config": wr.Config}[key.source](key.name)


def _wandb_panel(panel: Panel, grouping: Grouping, wr: Any) -> Any:
    if panel.kind == "line":
        return wr.LinePlot(title=panel.title, x=panel.x.name, y=[key.name for key in panel.y],
                           metric_regex=panel.regex, log_y=panel.log_y or None,
                           groupby_aggfunc=grouping.aggregate, groupby_rangefunc=grouping.band,
                           max_runs_to_show=MAX_RUNS_PER_PANEL)
    if panel.kind == "scatter":
        (y,) = panel.y
        return wr.ScatterPlot(title=panel.title, x=_wr_metric(panel.x, wr), y=_wr_metric(y, wr),
                              log_x=panel.log_x or None, log_y=panel.log_y or None)
    if panel.kind == "markdown":
        return wr.MarkdownPanel(markdown=panel.markdown)
    raise ValueError(f"no W&B panel for kind {panel.kind!r}")


def _groupby(grouping: Grouping, expr: Any) -> list:
    metric = {"run": lambda name: expr.Metric({"group": "Group"}.get(name, name)), "config": expr.Config,
              "summary": expr.Summary}
    return [metric[key.source](key.name) for key in grouping.group_keys()]


def _filters(grouping: Grouping, expr: Any, report_filter: dict[str, str] | None = None) -> Any:
    conditions = []
    if grouping.lr_filter is not None:
        conditions.append(expr.Config(grouping.lr_key.name) == grouping.lr_filter)
    for kind, value in (report_filter or {}).items():
        conditions.append({"tag": lambda v: expr.Tags().isin([v]), "sweep": lambda v: expr.Metric("Sweep") == v,
                           "group": lambda v: expr.Metric("Group") == v}[kind](value))
    return expr.And(*conditions) if conditions else ""


def _pinned_columns(panels: list[Panel]) -> list[str]:
    """The runs table's columns, as W&B names them; [] when these panels hold no runs table."""
    return [_column_name(key) for panel in panels if panel.kind == "runs_table" for key in panel.columns]


def build_workspace(spec: DashboardSpec, entity: str | None = None) -> Any:
    """The comparison workspace as a wandb_workspaces.workspaces.Workspace (not saved)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    sections = [
        ws.Section(name=section.name, is_open=True, pinned=section.pinned,
                   panels=[_wandb_panel(p, spec.grouping, wr) for p in section.panels if p.kind != "runs_table"],
                   panel_settings=ws.SectionPanelSettings(x_axis=section.x_axis),
                   layout_settings=ws.SectionLayoutSettings(columns=min(3, max(1, len(section.panels))), rows=2))
        for section in spec.sections
    ]
    return ws.Workspace(
        entity=entity or spec.entity or "", project=spec.project, name=spec.workspace_name, sections=sections,
        settings=ws.WorkspaceSettings(x_axis="step", max_runs=MAX_RUNS_PER_PANEL),
        runset_settings=ws.RunsetSettings(groupby=_groupby(spec.grouping, expr),
                                          filters=_filters(spec.grouping, expr),
                                          pinned_columns=_pinned_columns(spec.panels())),
    )


def build_report(spec: DashboardSpec, entity: str | None = None) -> Any:
    """The study report as a wandb_workspaces.reports.v2.Report (not saved): its text, then each section's panels
    over the study's runs, grouped like the workspace."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    if spec.report is None:
        raise ValueError("this spec has no report (build it with a report filter)")
    entity = entity or spec.entity or ""
    groupby = ["group" if key.source == "run" and key.name == "group" else f"{key.source}.{key.name}"
               for key in spec.grouping.group_keys()]
    blocks: list[Any] = [wr.MarkdownBlock(text=spec.report.text)]
    for name in spec.report.sections:
        section = spec.section(name)
        runset = wr.Runset(entity=entity, project=spec.project, name=spec.report.title,
                           filters=_filters(spec.grouping, expr, spec.report.filter), groupby=groupby,
                           pinned_columns=_pinned_columns(section.panels))
        panels = [_wandb_panel(p, spec.grouping, wr) for p in section.panels if p.kind != "runs_table"]
        blocks += [wr.H2(text=section.name), wr.PanelGrid(runsets=[runset], panels=panels)]
    (kind, value), = spec.report.filter.items()
    return wr.Report(project=spec.project, entity=entity, title=spec.report.title,
                     description=f"Runs with {kind} {value}, grouped by variant; built by python -m bnexp.dashboard",
                     blocks=blocks)


# ----------------------------------------------------------------------------------------------------------------
# Saving, with a bound on the time it may take
# ----------------------------------------------------------------------------------------------------------------

def _within(seconds: float, what: str, work: Callable[[], Any]) -> Any:
    """work() in a daemon thread, or a DashboardError after `seconds`: wandb's own retries can take minutes
    against a host that accepts connections but never answers, and a daemon thread does not hold up the exit."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # noqa: BLE001 - reported by the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=run, name="bnexp-dashboard-save", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise DashboardError(f"W&B did not answer within {seconds:g} s while {what} (raise --timeout on a slow "
                             f"network); {DRY_RUN_HINT}")
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, DashboardError):
            raise error
        raise DashboardError(f"{what} failed: {type(error).__name__}: {error}; {DRY_RUN_HINT}") from error
    return outcome["value"]


def _probe(base_url: str, timeout_s: float) -> None:
    """Fail fast, with the host in the message, when nothing listens there (no network, wrong WANDB_BASE_URL)."""
    parsed = urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=timeout_s):
            pass
    except OSError as error:
        raise DashboardError(f"cannot reach the W&B server {base_url} ({error}); {DRY_RUN_HINT}") from error


def publish(spec: DashboardSpec, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Save the workspace (and the report, if the spec has one) to W&B; returns their URLs."""
    import wandb

    from bnexp.train.wandb_sink import has_wandb_credentials

    base_url = str(wandb.setup().settings.base_url)
    # Checked before any wandb call: without a key, wandb may prompt for one, which would wait for a user.
    if not has_wandb_credentials(base_url):
        raise DashboardError(f"no W&B credentials (set WANDB_API_KEY or run `wandb login`); {DRY_RUN_HINT}")

    def save() -> list[str]:
        _probe(base_url, min(10.0, timeout_s))
        api = wandb.Api(timeout=max(1, int(timeout_s)))
        entity = spec.entity or api.default_entity
        urls = [build_workspace(spec, entity).save().url]
        if spec.report is not None:
            urls.append(build_report(spec, entity).save().url)
        return urls

    return _within(timeout_s, f"saving to {base_url}", save)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------

def describe(spec: DashboardSpec) -> str:
    """What the spec would build, in a few lines."""
    grouping = spec.grouping
    group_text = " > ".join(f"{key.source}:{key.name}" for key in grouping.group_keys())
    lr_text = "" if grouping.lr_filter is None else f", filtered to {grouping.lr_key.name} = {grouping.lr_filter:g}"
    lines = [f"workspace {spec.workspace_name!r} in {spec.entity or '<default entity>'}/{spec.project}, "
             f"grouped by {group_text} ({grouping.aggregate}, {grouping.band} band){lr_text}"]
    for index, section in enumerate(spec.sections, 1):
        lines.append(f"  {index}. {section.name}")
        for panel in section.panels:
            what = (panel.regex or ", ".join(k.name for k in panel.y + panel.columns) or panel.kind)
            lines.append(f"       [{panel.kind}] {what}")
    if spec.report:
        lines.append(f"report {spec.report.title!r}: runs with {spec.report.filter}, sections "
                     f"{', '.join(spec.report.sections)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bnexp.dashboard", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:2]))
    parser.add_argument("--project", default=DEFAULT_PROJECT, help="W&B project (default %(default)s)")
    parser.add_argument("--entity", default=None, help="W&B entity (default: the API key's default entity)")
    parser.add_argument("--name", default=DEFAULT_WORKSPACE_NAME, help="workspace name (default %(default)r)")
    lr = parser.add_mutually_exclusive_group()
    lr.add_argument("--lr", type=float, default=None, help="show only runs at this optim.lr")
    lr.add_argument("--split-lr", action="store_true", help="one line per variant and lr (sub-group by optim.lr)")
    parser.add_argument("--runs", nargs="+", type=Path, default=None, metavar="DIR",
                        help="local run/sweep dirs: fill the max-stable-lr table and the report's grid; "
                             "the data for --preview")
    parser.add_argument("--report", action="store_true", help="also build a report for one study (--tag, "
                                                              "--sweep or --group)")
    study = parser.add_mutually_exclusive_group()
    study.add_argument("--tag", help="the report's runs: this W&B tag (e.g. a sweep name given in logger.tags)")
    study.add_argument("--sweep", help="the report's runs: this W&B sweep id")
    study.add_argument("--group", help="the report's runs: this W&B group (a variant)")
    parser.add_argument("--report-title", default=None, help="default: 'bnexp study: <tag|group|sweep-id>'")
    parser.add_argument("--local-report", default=None, help="where the study's bnexp.report output lives "
                                                             "(default results/<study>)")
    parser.add_argument("--dry-run", action="store_true", help="no network: build the objects, print what they "
                                                               "hold, write the spec with --out")
    parser.add_argument("--out", type=Path, default=None, help="write the spec as JSON here")
    parser.add_argument("--preview", type=Path, default=None, metavar="PNG",
                        help="no network: draw the workspace's panels from --runs into this image")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds saving to W&B may take in all (default %(default)g)")
    args = parser.parse_args(argv)
    study_filter = {kind: getattr(args, kind) for kind in ("tag", "sweep", "group") if getattr(args, kind)}
    if args.report and not study_filter:
        parser.error("--report needs the study's runs: --tag NAME, --sweep ID or --group NAME")
    if study_filter and not args.report:
        parser.error("--tag/--sweep/--group choose the report's runs; add --report")
    if args.preview and not args.runs:
        parser.error("--preview draws local runs: give their dirs with --runs")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    args.study_filter = study_filter or None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs = None
        if args.runs:
            missing = [str(p) for p in args.runs if not p.exists()]
            if missing:
                raise DashboardError(f"no such path(s): {missing}")
            runs = discover_runs(args.runs)
            if not runs:
                raise DashboardError(f"no run dirs (summary.json + config.yaml) below {[str(p) for p in args.runs]}")
        spec = build_spec(project=args.project, entity=args.entity, name=args.name, lr_filter=args.lr,
                          split_by_lr=args.split_lr, runs=runs, report_filter=args.study_filter,
                          report_title=args.report_title, local_report=args.local_report)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(spec.to_json() + "\n")
            print(f"wrote the dashboard spec to {args.out}")
        if args.preview:
            from bnexp.dashboard.preview import render_preview

            print(f"wrote {render_preview(spec, runs, args.preview)} ({len(runs)} runs)")
        if args.dry_run or args.preview:
            build_workspace(spec)  # the same objects a real run saves: built (and validated) offline
            if spec.report:
                build_report(spec)
            print(describe(spec))
            if args.dry_run:
                print("dry run: nothing sent to W&B")
            return 0
        for url in publish(spec, args.timeout):
            print(f"saved {url}")
        return 0
    except DashboardError as error:
        print(f"bnexp.dashboard: error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        print(f"bnexp.dashboard: error: {error}; install the W&B extra: pip install -e \".[wandb]\"",
              file=sys.stderr)
        return 2


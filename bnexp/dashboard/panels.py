"""The dashboard's content: its sections and panels (titles, the logged keys and regexes they plot, the markdown
notes) and the grouping, as a plain spec (bnexp/dashboard/spec.py). No wandb: bnexp/dashboard/workspace.py turns
the spec into W&B objects, bnexp/dashboard/preview.py draws it locally.
"""
from __future__ import annotations

import re

from bnexp.config.compose import CONF_DIR, default_instrument_cfg
from bnexp.dashboard.spec import DashboardSpec, Grouping, Key, Panel, ReportSpec, Section, config, history, summary
from bnexp.report.records import aggregate, largest_stable_lrs, variant_sort_key

SPEC_FORMAT = "bnexp-dashboard/1"
DEFAULT_PROJECT = "bnexp"
DEFAULT_WORKSPACE_NAME = "bnexp: variant comparison"

# Regexes are anchored and use only syntax that Python and JavaScript (the W&B app) read alike.
LAYER_GRAD_NORM_REGEX = r"^grad_norm/(?!global$).+$"
LAYER_UPDATE_RATIO_REGEX = r"^update_ratio/(?!global$).+$"
BN_VAR_MEAN_REGEX = r"^bn/.+/var_mean$"
BN_MEAN_MAX_REGEX = r"^bn/.+/mean_max$"
BN_RUNNING_MEAN_GAP_REGEX = r"^bn/.+/running_mean_gap$"
BN_RUNNING_VAR_LOGRATIO_REGEX = r"^bn/.+/running_var_logratio$"
ACT_RMS_REGEX = r"^act/.+/rms$"

# The sharpness probe is off unless this is > 0; it then logs both keys in every sharpness_every-th step record.
SHARPNESS_SWITCH = "instrument.sharpness_every"

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
        "Sections run from outcome to cause: accuracy, loss, sharpness (in runs that measure it), gradient norms, "
        "update ratios, the norm layers' input statistics, activation RMS, and a summary per run.")


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
        Section("Sharpness", "step", [
            Panel("line", "Sharpness (top Hessian eigenvalue, log y) vs its stability threshold (second line; "
                          "2/lr for plain gradient descent): rising to it and hovering there = edge of stability",
                  x=step, y=[history("sharpness/top_eig"), history("sharpness/threshold")], log_y=True),
        ], logged_when=SHARPNESS_SWITCH),
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
    # The name is a --tag/--group from the command line, which no config schema checks: only a plain file name may
    # pick a file, so that a tag such as ../x never reads outside conf/sweep/.
    if sweep_name and re.fullmatch(r"[\w.-]+", sweep_name) and sweep_file.is_file():
        from bnexp.sweep.grid import compose_sweep_config

        # Composed as the sweep composes it: most sweep files take their seeds and data from a recipe's defaults.
        sweep = compose_sweep_config([f"sweep={sweep_name}"])
        overrides = sweep.get("train_overrides") or []
        data = [o for o in overrides if str(o).startswith("data")] or ["data=cifar10 (default)"]
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

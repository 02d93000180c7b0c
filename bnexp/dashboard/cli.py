"""W&B dashboards as code: the comparison workspace, and a report for one study, from the keys the trainer logs.

    python -m bnexp.dashboard --entity my-team --project bnexp            # create the comparison workspace
    python -m bnexp.dashboard --project bnexp --lr 0.4                     # the same, filtered to one lr
    python -m bnexp.dashboard --project bnexp --tag lr_stability --report  # also a report for one study
    python -m bnexp.dashboard --project bnexp --dry-run --out dashboard.json   # no network: write the spec
    python -m bnexp.dashboard --runs outputs/sweeps/cpu_study --preview results/dashboard/preview.png

The command line of bnexp.dashboard: build the spec (bnexp/dashboard/panels.py), then write it (--out), draw it
(--preview), build the W&B objects offline (--dry-run), or save them (bnexp/dashboard/publish.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnexp.dashboard.panels import DEFAULT_PROJECT, DEFAULT_WORKSPACE_NAME, build_spec
from bnexp.dashboard.publish import DEFAULT_TIMEOUT_S, publish
from bnexp.dashboard.spec import DashboardError, DashboardSpec
from bnexp.dashboard.workspace import build_report, build_workspace
from bnexp.report.records import discover_runs


def describe(spec: DashboardSpec) -> str:
    """What the spec would build, in a few lines."""
    grouping = spec.grouping
    group_text = " > ".join(f"{key.source}:{key.name}" for key in grouping.group_keys())
    lr_text = "" if grouping.lr_filter is None else f", filtered to {grouping.lr_key.name} = {grouping.lr_filter:g}"
    lines = [f"workspace {spec.workspace_name!r} in {spec.entity or '<default entity>'}/{spec.project}, "
             f"grouped by {group_text} ({grouping.aggregate}, {grouping.band} band){lr_text}"]
    for index, section in enumerate(spec.sections, 1):
        only_when = f" (runs with {section.logged_when} > 0)" if section.logged_when else ""
        lines.append(f"  {index}. {section.name}{only_when}")
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

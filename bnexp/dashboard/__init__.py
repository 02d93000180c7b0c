"""`python -m bnexp.dashboard`: W&B dashboards as code (a workspace and a report), and the same panels drawn
locally.

The dashboard is first a plain spec (spec.py: sections of panels, each naming the logged keys, regexes, summary
fields and config keys it plots, plus the grouping), built by panels.py and written by --dry-run as JSON.
workspace.py turns it into wandb-workspaces objects, and only saving them needs the network (publish.py);
preview.py draws the same panels from local run dirs; check.py holds the spec against what a run logged; cli.py is
the command line.
"""

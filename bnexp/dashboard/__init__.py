"""`python -m bnexp.dashboard`: W&B dashboards as code (a workspace and a report), and the same panels drawn
locally."""

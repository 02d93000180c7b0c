"""`python -m bnexp.report`: run dirs aggregated into tables, intervals over seeds, plots and report.md."""

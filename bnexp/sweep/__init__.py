"""`python -m bnexp.sweep`: grids of runs (variants x models x lrs x seeds) and the search for each variant's
largest trainable lr, resumable, with every run in its own process. From the config to the runs: grid (the config
and its jobs), run (one sweep, start to end), scheduler (runs to their end), executors / processes / attempt
(where and how a run executes, and how it ended), ledger (sweep_status.json),
largest_lr (the largest_lr mode's planner)."""

"""`python -m bnexp.sweep`: grids of runs (variants x models x lrs x seeds), the search for each variant's largest
trainable lr and the tuning of each variant's best lr, resumable, with every run in its own process. From the config
to the runs: grid (the config and its jobs), run (one sweep, start to end), scheduler (runs to their end), executors
/ processes / attempt (where and how a run executes, and how it ended), ledger (sweep_status.json), planning (what
the planning modes share), largest_lr and best_lr (their planners)."""

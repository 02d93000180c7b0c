"""`python -m bnexp.sweep`: grids of runs (variants x models x lrs x seeds) and the search for each variant's
largest trainable lr, resumable, with every run in its own process."""

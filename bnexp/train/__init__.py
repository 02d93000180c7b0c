"""One training run: the command line (`python -m bnexp.train`), the run's life (lock, signals, summary), the loop,
the step and its log window, and the sinks the numbers go to (local files, W&B)."""

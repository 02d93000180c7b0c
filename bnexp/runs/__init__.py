"""The run-dir contract that train writes and sweep, report and dashboard read: the files and their reader, a run's
lock, atomic writes, provenance, and how a run ended."""

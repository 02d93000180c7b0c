"""`python -m bnexp.sweep`: the command line. Composes the sweep config, then runs (or resumes) the sweep.

    python -m bnexp.sweep sweep=lr_stability [sweep.<key>=...] [train overrides...] [--dry-run] [--print-config]

Arguments whose key starts with `sweep` override the sweep config (conf/sweep/<name>.yaml, e.g. `sweep.seeds=[0]`,
`sweep.workers=2`); every other argument is a train override passed to every run (e.g. `data=synthetic`). A
mistake in either is one line on stderr and exit code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import re
import signal
import sys

from omegaconf import OmegaConf

from bnexp.config.sweep_schema import describe_missing_key
from bnexp.sweep.grid import compose_sweep_config, split_cli_overrides
from bnexp.sweep.ledger import SweepLockedError
from bnexp.sweep.run import run_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bnexp.sweep",
        description="Run a grid of bnexp.train runs. Overrides whose key starts with 'sweep' change the sweep "
                    "config (conf/sweep/<name>.yaml); all others are passed to every training run.",
        epilog="example: python -m bnexp.sweep sweep=smoke sweep.workers=2 data=synthetic train.epochs=1")
    parser.add_argument("overrides", nargs="*", help="sweep=<name>, sweep.<key>=<value>, or train overrides")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the commands and exit (largest_lr mode: the first round)")
    parser.add_argument("--print-config", action="store_true", help="print the composed sweep config and exit")
    args = parser.parse_intermixed_args(argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # SIGTERM (e.g. a batch system stopping the job) takes the same orderly path as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        sweep_overrides, train_overrides = split_cli_overrides(args.overrides)
        sweep_cfg = compose_sweep_config(sweep_overrides)
        if args.print_config:
            print(OmegaConf.to_yaml(sweep_cfg))
            return 0
        return run_sweep(sweep_cfg, train_overrides, dry_run=args.dry_run)
    except KeyboardInterrupt:  # before any run started (the scheduler records its own stops)
        print("bnexp.sweep: interrupted", file=sys.stderr)
        return 130
    except (HydraException, OmegaConfBaseException, ValueError, SweepLockedError) as error:
        # Configuration mistakes: a clear message beats a traceback (a line per problem).
        missing = re.match(r"Could not override '(sweep\.[^']+)'\.\s+To append to your config use \+(\S+)",
                           str(error))
        lines = [describe_missing_key(*missing.groups())] if missing else str(error).splitlines()
        for line in lines or [repr(error)]:
            print(f"bnexp.sweep: error: {line}", file=sys.stderr)
        return 2

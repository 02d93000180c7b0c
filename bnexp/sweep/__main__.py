"""`python -m bnexp.sweep`: see bnexp/sweep/cli.py."""
import sys

from bnexp.sweep.cli import main

sys.exit(main())

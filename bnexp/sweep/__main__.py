"""`python -m bnexp.sweep`: see bnexp/sweep/runner.py."""
import sys

from bnexp.sweep.runner import main

sys.exit(main())

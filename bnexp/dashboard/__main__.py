"""`python -m bnexp.dashboard`: see bnexp/dashboard/cli.py."""
import sys

from bnexp.dashboard.cli import main

sys.exit(main())

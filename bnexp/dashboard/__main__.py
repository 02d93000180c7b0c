"""`python -m bnexp.dashboard`: see bnexp/dashboard/workspace.py."""
import sys

from bnexp.dashboard.workspace import main

sys.exit(main())

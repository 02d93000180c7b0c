"""`python -m bnexp.report`: see bnexp/report/build.py."""
import sys

from bnexp.report.build import main

sys.exit(main())

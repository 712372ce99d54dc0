"""`python -m pytest_securitynet.report RESULTS.json -o DIR`."""

import sys

from pytest_securitynet.report.cli import main

sys.exit(main())

"""`python -m pytest_securitynet.report RESULTS.json -o DIR`."""

import sys

from .cli import main

sys.exit(main())

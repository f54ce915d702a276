"""`python -m retrieval index|query|dedup|cluster` (`retrieval.cli`)."""

import sys

from retrieval.cli import main

sys.exit(main())

"""`python -m crmcore.cli …` runs the `crm` command."""

import sys

from crmcore.cli import main

sys.exit(main())

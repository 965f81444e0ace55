"""`python -m r3fast ...` = the `r3fast` command; what torchrun launches (`torchrun ... -m r3fast train`)."""

import sys

from .cli import main

sys.exit(main())

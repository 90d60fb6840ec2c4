"""`python -m ats_hf ...`: the `ats-hf` command line (see `ats_hf_cli`)."""

import sys

from ats_hf_cli import main

if __name__ == "__main__":
    sys.exit(main())

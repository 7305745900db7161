"""``python -m fusionserve ...`` is ``fusionserve ...``."""

import sys

from fusionserve.service.__main__ import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m data.convert``: see :mod:`data.convert.cli`."""
import sys

from data.convert.cli import main

sys.exit(main())

"""``python -m trading_operator`` is the ``trading-operator`` command."""

import sys

from trading_operator.main import main

sys.exit(main())

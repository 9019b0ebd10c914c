"""``python -m trading_system.coordinator.service coordinator serve|txns ...``"""

from trading_system.coordinator.service.cli import main

raise SystemExit(main())

"""TradingSystem services: the high-availability trading pipeline."""

__version__ = "0.1.0"

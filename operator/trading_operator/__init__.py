"""The kopf operator that reconciles TradingSystem resources.

The importable name is ``trading_operator``: a package called ``operator`` would shadow
the standard library module of the same name.
"""

__version__ = "0.1.0"

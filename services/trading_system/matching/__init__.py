"""Matching engine: the pure core lives in :mod:`trading_system.matching.core`."""

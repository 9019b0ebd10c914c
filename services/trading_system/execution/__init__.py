"""Execution: the order API's pure logic (order state, rate limits, algos, slippage)."""

"""The execution service process: HTTP order API, order tracking, parents, active/standby."""

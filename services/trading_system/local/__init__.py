"""The pipeline as local processes: members on their own loopback addresses, supervised
by the operator's failover policy (``trading_system.ha``) instead of by Kubernetes."""

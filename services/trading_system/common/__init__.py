"""Plumbing shared by every service: JSON logs, bearer-token auth and the HTTP health server."""

"""The embedded demo: simulated traders driving the in-process pipeline. See docs/demo.md."""

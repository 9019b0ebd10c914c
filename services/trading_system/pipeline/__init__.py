"""The pipeline wired in one process: venue adapter, coordinator driver, settlement
consumer and execution tracker, talking over the message bus. See docs/demo.md."""

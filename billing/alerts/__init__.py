"""Alerts: channels that carry them, and the exactly-once raising and retried delivery of each."""

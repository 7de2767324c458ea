"""Budgets: the in-memory index the gateway holds, and the reservation engine that enforces it."""

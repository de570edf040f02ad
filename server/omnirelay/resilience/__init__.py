"""Surviving upstream failures: circuit breakers, retry policies and budgets, failure classes."""

"""Model resolution and route planning."""

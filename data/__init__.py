"""Data sets: reading raw sources into arrays the task samplers draw from."""

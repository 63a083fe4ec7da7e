"""Adapters that put madapt inside other tools (each imports its tool; import the one you use)."""

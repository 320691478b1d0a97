"""Tuned config tables (data): read with importlib.resources.files(__name__)."""

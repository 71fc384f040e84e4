"""Checks of the repository itself: layers, test-module imports, machine paths, the docs' configs."""

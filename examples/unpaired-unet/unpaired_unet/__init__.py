"""Example third-party plugin package for unpaired."""

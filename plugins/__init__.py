"""Built-in components of `unpaired`, registered through the same entry points as any third-party plugin.

Each module here is one plugin (see ``[project.entry-points.unpaired]`` in pyproject.toml).
"""

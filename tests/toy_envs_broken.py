"""A module that fails on import, as an environment's module may."""

raise RuntimeError("broken on import")

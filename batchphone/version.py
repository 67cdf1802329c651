"""The package's version: a leaf, so the client's User-Agent needs no import of the package root.

pyproject.toml reads it from here (hatch's version source), so it is declared once.
"""

__version__ = "0.1.0"

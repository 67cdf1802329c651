"""Modes: one module per command, wiring files, rows and remote together."""

"""Rows: pure rules on one input row (phone normalization, the row's preparation)."""

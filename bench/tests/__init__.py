"""Tests of the bench itself (``pytest bench/tests``)."""

"""Test helpers for users' and our own suites."""

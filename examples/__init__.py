"""Runnable examples of asyncsourcing."""

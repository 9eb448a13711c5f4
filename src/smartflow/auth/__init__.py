"""Caller authentication."""

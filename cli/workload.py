"""Placeholder."""

COMMANDS = []

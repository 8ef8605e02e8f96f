"""Integrations: the command line and web frameworks."""

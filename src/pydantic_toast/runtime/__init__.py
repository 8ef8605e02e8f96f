"""The runtime: event loops, connection pools and their lifecycle."""

"""Command-line tools (``python -m sifa.tools.<name>``)."""

"""The `kv` command line."""

from kvstore.cli.main import cli, main

__all__ = ["cli", "main"]

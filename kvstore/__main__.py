"""`python -m kvstore` is the `kv` command."""

from kvstore.cli import main

main()

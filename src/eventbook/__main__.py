"""`python -m eventbook`: the same as the `eventbook` command."""

from .cli import main

main()

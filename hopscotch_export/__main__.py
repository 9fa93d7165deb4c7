"""``python -m hopscotch_export`` runs the CLI."""

from .cli import main

main()

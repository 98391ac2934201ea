"""``python -m fedprune``: the ``fedprune`` command."""

from fedprune.cli import main

main()

"""``python -m wirecap`` is the ``wirecap`` command."""

from wirecap.cli import main

main()

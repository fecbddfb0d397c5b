"""``python -m hub`` is the ``gridhub`` command."""

from hub.cli import main

main()

"""``python -m relay_client`` runs the ``relay-peer`` command line tool."""

from .cli import main

raise SystemExit(main())

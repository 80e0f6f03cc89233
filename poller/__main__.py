"""``python -m poller`` runs the command line."""

from poller.cli import main

raise SystemExit(main())

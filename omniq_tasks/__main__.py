"""``python -m omniq_tasks`` runs the command line."""

from .cli import main

raise SystemExit(main())

"""``python -m omniq_tasks`` runs the command line."""

from .cli.main import main

raise SystemExit(main())

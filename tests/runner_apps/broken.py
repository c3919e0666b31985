"""An app module that cannot be imported: children that load it die at start."""

raise RuntimeError("runner_apps.broken refuses to import")

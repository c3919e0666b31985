"""Small apps the runner tests import by their "module:app" path (children import them too)."""

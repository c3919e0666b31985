"""The OmniQ v1 protocol in Python: keys, scripts, the typed client and its replies."""

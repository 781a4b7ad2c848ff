"""Command-line shells over the library: ``iast-ca`` (admin.py) and ``iast-ssh`` (client.py)."""

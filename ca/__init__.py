"""iast-ssh: a small, audited SSH certificate authority."""

__version__ = "0.1.0"

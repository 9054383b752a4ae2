"""robosystems: org-centric identity and billing service."""

__version__ = "0.1.0"

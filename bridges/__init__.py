"""Caliopen: private correspondence in end-to-end-encrypted Matrix rooms."""

__version__ = "0.1.0"

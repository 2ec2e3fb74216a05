"""Meridian: the library every region's service is built on, and the shared topology model."""

__version__ = "0.1.0"

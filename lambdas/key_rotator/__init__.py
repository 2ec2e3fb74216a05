"""Meridian Lambda: key rotator."""

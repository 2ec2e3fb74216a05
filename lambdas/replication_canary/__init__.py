"""Meridian."""

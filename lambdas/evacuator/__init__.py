"""Meridian Lambda: evacuator."""

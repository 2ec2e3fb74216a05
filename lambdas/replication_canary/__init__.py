"""Meridian Lambda: replication_canary."""

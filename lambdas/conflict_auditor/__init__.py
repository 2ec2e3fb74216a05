"""Meridian Lambda: conflict_auditor."""

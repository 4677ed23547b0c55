"""Curate: the label rule over probe evidence (label), split balancing (balance), plots."""

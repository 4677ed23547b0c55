"""Curate: the label rule over probe evidence (label), agreement with a source's reference label such as FVQA's
`category` (reference), split balancing (balance), plots."""

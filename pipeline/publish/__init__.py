"""Publish: the Hugging Face dataset folder (folder), its card (card), the veRL export (verl)."""

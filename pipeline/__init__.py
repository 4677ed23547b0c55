"""Search-balanced VQA curation and GRPO training after MMSearch-R1: the library (no CLI parsing here)."""

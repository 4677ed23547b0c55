"""Dedup: perceptual hashes (hashing), Hamming search (hamming), near-duplicate clusters (clusters), contamination against evaluation sets (contamination)."""

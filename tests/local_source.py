"""A generated local gather source for the scale-out and resume tests: rows.jsonl + a folder of small noise images.

Every `dup_every`-th row repeats an earlier source id (duplicate_id), every `bad_every`-th has no answer
(missing_answer), and images are shared by many rows, so dedup finds exact copies too. Writes only under `root`.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def make_source(root: Path, n: int, *, side: int = 48, images: int = 24, dup_every: int = 50,
                bad_every: int = 97) -> Path:
    """Write root/rows.jsonl (n rows) and root/img/*.png; returns the jsonl path."""
    rng = np.random.default_rng(7)
    (root / "img").mkdir(parents=True, exist_ok=True)
    for k in range(images):
        arr = (rng.random((side * 3 // 4, side, 3)) * 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        (root / "img" / f"{k}.png").write_bytes(buf.getvalue())
    lines = []
    for i in range(n):
        sid = f"r{i - 1}" if i % dup_every == dup_every - 1 else f"r{i}"
        lines.append(json.dumps({"id": sid, "image": f"img/{i % images}.png", "question": f"What is shown in {i}?",
                                 "answer": "" if i % bad_every == 5 else f"pattern {i % images}", "n": i}))
    path = root / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

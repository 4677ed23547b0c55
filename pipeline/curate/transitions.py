"""Labels that stay current: how items moved between labels when a later policy is probed again.

The search boundary moves as the policy learns: an item the labeler needed search for may be answered without it by
the trained policy (it learned the fact, or to read the question better), and the other way round. After the
trained policy re-probes the test split with the same cascade and rule, `transitions(before, after)` compares each
item's split label with its new one. Reads and writes nothing.

  before: item id -> the split's label (one of the four kept labels)
  after:  item id -> the re-probe's label (any of LABELS: unanswerable and uncertain included)

Returns the transition matrix (before x after counts), the moves between search_free and search-required (the figure
the issue asks for), the items that changed kind of search, and those that fell out (unanswerable, uncertain or not
re-probed), with shares over the compared items. The seed-to-seed floor (two probes of the same model disagree on
about 7% of labels, bench/RESULTS.md) is the noise a move has to exceed to mean the policy changed.
"""
from __future__ import annotations

from collections import Counter
from typing import Mapping

from pipeline.schema import LABELS, SEARCH_REQUIRED

KEPT = ("search_free", *SEARCH_REQUIRED)
MISSING = "not_reprobed"
AFTER = (*LABELS, MISSING)
SHORT = {"search_free": "free", "image_search_required": "image", "text_search_required": "text",
         "mixed_search_required": "mixed", "unanswerable": "unansw.", "uncertain": "uncertain",
         "not_reprobed": "missing"}


def kind(label: str) -> str:
    """search_free | search_required | out (unanswerable, uncertain, not re-probed)."""
    if label == "search_free":
        return "search_free"
    return "search_required" if label in SEARCH_REQUIRED else "out"


def move(before: str, after: str) -> str:
    """How one item moved: out (unanswerable, uncertain, not re-probed) | across (search_free <-> search-required)
    | same (the same label) | kind (another kind of search)."""
    kb, ka = kind(before), kind(after)
    return "out" if ka == "out" else "across" if kb != ka else "same" if after == before else "kind"


def transitions(before: Mapping[str, str], after: Mapping[str, str]) -> dict:
    """The moves of every item of `before` (see the module docstring); items of `after` not in `before` are ignored."""
    bad = sorted({v for v in before.values() if v not in KEPT})
    if bad:
        raise ValueError(f"before: labels must be one of {KEPT}, got {bad}")
    pairs = Counter((b, after.get(i, MISSING)) for i, b in before.items())
    n = len(before)
    moves = Counter((kind(b), kind(a)) for (b, a), c in pairs.items() for _ in range(c))
    free_to_req, req_to_free = moves[("search_free", "search_required")], moves[("search_required", "search_free")]
    moved = Counter(move(b, a) for (b, a), c in pairs.items() for _ in range(c))
    within, out, same = moved["kind"], moved["out"], moved["same"]
    share = lambda k: round(k / n, 4) if n else 0.0  # noqa: E731
    return {
        "items": n,
        "same_label": same,
        "same_label_share": share(same),
        "search_free_to_required": free_to_req,
        "required_to_search_free": req_to_free,
        "moved_across_boundary": free_to_req + req_to_free,
        "moved_across_boundary_share": share(free_to_req + req_to_free),
        "changed_search_kind": within,
        "fell_out": out,
        "fell_out_share": share(out),
        "search_free_before": sum(1 for v in before.values() if v == "search_free"),
        "search_free_after": sum(1 for i in before if after.get(i) == "search_free"),
        "matrix": {b: {a: pairs.get((b, a), 0) for a in AFTER} for b in KEPT},
    }


def render_transitions(t: dict, title: str = "Labels after re-probing with the trained policy") -> str:
    """Markdown: the before x after table and one line of moves."""
    cols = [a for a in AFTER if a != MISSING or any(t["matrix"][b][MISSING] for b in KEPT)]
    lines = [f"## {title}", "",
             f"Rows: the split's label (probed with the base labeler); columns: the label the trained policy's re-probe "
             f"gives (same cascade, rule and sampling). {t['items']} items.", "",
             "| before \\ after | " + " | ".join(SHORT[a] for a in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for b in KEPT:
        lines.append(f"| {SHORT[b]} | " + " | ".join(str(t["matrix"][b][a]) for a in cols) + " |")
    lines += ["", f"Moved across the search boundary: {t['moved_across_boundary']} of {t['items']} "
              f"({t['moved_across_boundary_share']:.1%}): {t['required_to_search_free']} search-required -> "
              f"search_free, {t['search_free_to_required']} search_free -> search-required. Same label: "
              f"{t['same_label']} ({t['same_label_share']:.1%}); another kind of search: {t['changed_search_kind']}; "
              f"unanswerable, uncertain or not re-probed: {t['fell_out']}. Two probes of one model with different "
              "seeds disagree on about 7% of labels (bench/RESULTS.md): moves below that are noise.", ""]
    return "\n".join(lines)


__all__ = ["AFTER", "KEPT", "MISSING", "kind", "move", "render_transitions", "transitions"]

"""The environment TRL's GRPOTrainer drives: the protocol's own environment class, fed from the training rows.

`environment_class(protocol, tools, condition, with_images)` returns a subclass of
`protocol.make_environment_class(...)` (the same tools, limits, refusal texts and result rendering as probe and
evaluate) whose `reset` takes the image to search from the row's `search_image` column: the item's original
encoded bytes, so image-search cache keys match the ones probe wrote. The prompt image, when the policy sees one,
travels separately in the `image` column (TRL decodes it and puts it into the prompt); a text-only policy gets no
`image` column, yet its image search still searches the item image. Tool results of a VLM policy carry the result
thumbnails as image blocks (PIL), which TRL feeds to the model in the next turn. Reads/writes nothing itself.
"""
from __future__ import annotations

from typing import Any

SEARCH_IMAGE_COLUMN = "search_image"


def environment_class(protocol: Any, tools: Any, condition: str = "tools", with_images: bool = True) -> type:
    """A TRL `environment_factory` class for `protocol` over `tools` (a `pipeline.search.SearchTools`)."""
    base = protocol.make_environment_class(tools, with_images=with_images, condition=condition)

    def reset(self, **row: Any) -> None:
        row = dict(row)
        row.pop("images", None)
        row["image"] = row.get(SEARCH_IMAGE_COLUMN)
        return base.reset(self, **row)

    return type(base.__name__, (base,), {"reset": reset, "__doc__": base.__doc__})

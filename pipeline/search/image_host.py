"""Public URLs for query images: Google Lens (SerpAPI) fetches the image it searches with from a URL.

`ImageHost.public_url(image, context)`: an item's own URL (`context["image_url"]`, from its meta) is used as it is.
Any other image is uploaded once, to the place `search.web.upload` names, and its URL is kept in the search cache's
`image_urls` table under the sha256 of the image bytes and the destination, so the same image is never uploaded
twice (across calls, processes and runs). `upload_many` does the same for many images at once (one Hub commit per
`upload.batch` images): `python -m stages search --upload-images ITEMS` uploads a dataset's images before probing.

Destinations (`upload.to`):
- `hub`: files `<folder>/<sha256>.<ext>` committed to the dataset repo `repo_id` (huggingface_hub; HF_HUB_OFFLINE=0,
  token from HF_TOKEN or the login cache); URL `<endpoint>/datasets/<repo>/resolve/<commit>/<path>` (the commit, so
  it never changes). The repo must be public for Google to read it.
- `fsspec`: `<fsspec_url>/<sha256>.<ext>` written with fsspec (s3://, gcs://, file://, ...); URL
  `public_url_template.format(name=...)`.
- `post`: the bytes are POSTed to `post_url`, which answers JSON {"url": ...}.
Reads/writes: the destination, and the cache's `image_urls` table. Secrets: none of its own (huggingface_hub and
fsspec read theirs); error messages never carry a token.
"""
from __future__ import annotations

import io
import threading
from typing import Any, Callable, Mapping

from pipeline.search.types import SearchError, sha256_hex

PUBLIC = ("http://", "https://")


def image_ext(data: bytes) -> str:
    """File extension of encoded image bytes (jpg, png, webp, gif, ...); ValueError when they are not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        fmt = (Image.open(io.BytesIO(data)).format or "").lower()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"query image is not a readable image ({exc})") from None
    return {"jpeg": "jpg", "mpo": "jpg"}.get(fmt, fmt or "img")


class ImageHost:
    """Uploads query images once and remembers their public URLs (see the module docstring)."""

    def __init__(self, upload, store=None, client: Callable[[], Any] | None = None):
        self.upload = upload  # UploadParams
        self.store = store  # SearchCache (its image_urls table) or None: URLs kept for this object only
        self._client = client  # () -> pipeline.search.http.HttpClient, for `post`
        self._memory: dict[str, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ImageHost(to={self.upload.to!r}, destination={self.destination!r})"

    @property
    def destination(self) -> str:
        u = self.upload
        if u.to == "hub":
            from huggingface_hub import constants

            return f"hub:{constants.ENDPOINT}/datasets/{u.repo_id}/{u.folder}"
        return {"fsspec": f"fsspec:{u.public_url_template}", "post": f"post:{u.post_url}"}.get(u.to, "none")

    def public_url(self, image: bytes, context: Mapping[str, Any] | None = None) -> str:
        """The URL Lens should fetch for `image` (uploading it first if it has none yet)."""
        url = str((context or {}).get("image_url") or "")
        if url.startswith(PUBLIC):
            return url
        if self.upload.to == "none":
            raise SearchError("SerpAPI google_lens needs a public image URL: this item has no meta.image_url and "
                              "search.web.upload.to is none; set it to hub (the dataset's Hub repo), fsspec or post "
                              "(README: 'Web image search on local images')")
        with self._lock:  # one upload at a time: concurrent calls for one image must not upload it twice
            return self.upload_many([image])[sha256_hex(image)]

    def known(self, sha: str) -> str | None:
        if sha in self._memory:
            return self._memory[sha]
        return self.store.image_url(sha, self.destination) if self.store is not None else None

    def upload_many(self, images: list[bytes]) -> dict[str, str]:
        """sha256 -> public URL for every image, uploading only those without a known URL."""
        by_sha = {sha256_hex(b): bytes(b) for b in images}
        urls = {sha: u for sha in by_sha if (u := self.known(sha))}
        todo = [(sha, data) for sha, data in by_sha.items() if sha not in urls]
        step = self.upload.batch if self.upload.to == "hub" else 1  # one Hub commit per batch
        for start in range(0, len(todo), step):
            for sha, url in self._send(todo[start:start + step]).items():
                self._memory[sha] = urls[sha] = url
                if self.store is not None:
                    self.store.put_image_url(sha, self.destination, url)
        return urls

    # -- destinations ------------------------------------------------------------------------------------------
    def _send(self, part: list[tuple[str, bytes]]) -> dict[str, str]:
        named = [(sha, f"{sha}.{image_ext(data)}", data) for sha, data in part]
        try:
            return getattr(self, f"_to_{self.upload.to}")(named)
        except SearchError:
            raise
        except Exception as exc:  # huggingface_hub / fsspec errors: say where, never with a token
            raise SearchError(f"image upload to {self.destination} failed: {type(exc).__name__}: {str(exc)[:300]}") from None

    def _to_hub(self, named: list[tuple[str, str, bytes]]) -> dict[str, str]:
        from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_url

        if constants.HF_HUB_OFFLINE:
            raise SearchError("uploading query images to the Hub needs HF_HUB_OFFLINE=0 (and a token in HF_TOKEN); "
                              "nothing was uploaded")
        u = self.upload
        api = HfApi()
        api.create_repo(u.repo_id, repo_type="dataset", exist_ok=True)
        paths = {sha: f"{u.folder.strip('/')}/{name}" if u.folder.strip("/") else name for sha, name, _ in named}
        info = api.create_commit(u.repo_id, [CommitOperationAdd(paths[sha], data) for sha, _, data in named],
                                 commit_message=f"Query images for image search ({len(named)})", repo_type="dataset",
                                 revision=u.revision)
        return {sha: hf_hub_url(u.repo_id, path, repo_type="dataset", revision=info.oid, endpoint=api.endpoint)
                for sha, path in paths.items()}

    def _to_fsspec(self, named: list[tuple[str, str, bytes]]) -> dict[str, str]:
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.upload.fsspec_url)
        fs.makedirs(root, exist_ok=True)
        out = {}
        for sha, name, data in named:
            fs.pipe_file(f"{root.rstrip('/')}/{name}", data)
            out[sha] = self.upload.public_url_template.format(name=name, sha256=sha)
        return out

    def _to_post(self, named: list[tuple[str, str, bytes]]) -> dict[str, str]:
        if self._client is None:
            raise SearchError("upload.to=post needs an HTTP client")
        out = {}
        for sha, _, data in named:
            resp = self._client().request("POST", self.upload.post_url, "image upload", data=data,
                                          headers={"Content-Type": "application/octet-stream"})
            try:
                url = resp.json()["url"]
            except (ValueError, KeyError, TypeError):
                raise SearchError("image upload: response is not JSON {\"url\": ...}") from None
            out[sha] = str(url)
        return out


def host_for(web, store=None) -> ImageHost:
    """The ImageHost of `web` (WebParams) over `store` (a SearchCache), with an HTTP client for `post`."""
    from pipeline.search.http import HttpClient

    return ImageHost(web.upload, store, lambda: HttpClient(web.timeout_s, web.retries, web.backoff_s, web.concurrency))


def upload_item_images(items_path: str, host: ImageHost) -> dict[str, Any]:
    """Upload the images of an items parquet that have no meta.image_url; returns counts for the command line."""
    import json

    import pyarrow.parquet as pq

    if host.upload.to == "none":
        raise ValueError("search.web.upload.to is none: set it to hub, fsspec or post to upload images")
    counts = {"items": 0, "without_image": 0, "with_url": 0, "images": 0, "already_uploaded": 0, "uploaded": 0}
    pending: dict[str, bytes] = {}
    for batch in pq.ParquetFile(items_path).iter_batches(batch_size=256, columns=["image", "meta"]):
        for row in batch.to_pylist():
            counts["items"] += 1
            data = (row["image"] or {}).get("bytes")
            if not data:
                counts["without_image"] += 1
            elif str(json.loads(row["meta"] or "{}").get("image_url") or "").startswith(PUBLIC):
                counts["with_url"] += 1
            else:
                pending[sha256_hex(data)] = data
    counts["images"] = len(pending)
    counts["already_uploaded"] = sum(1 for sha in pending if host.known(sha))
    host.upload_many(list(pending.values()))
    counts["uploaded"] = counts["images"] - counts["already_uploaded"]
    return {**counts, "destination": host.destination}

"""The content-addressed tool-result cache every search call goes through.

Key = sha256 of (tool, backend, backend version, normalised input). Stored in one sqlite database (WAL journal,
busy timeout) so that several processes and threads can read and write at once without losing entries; thumbnails
are stored once by content hash. Failed calls go to a separate `failures` table: recorded for inspection, never
served as results. Nothing secret is ever stored: only the tool input (query text or image hashes) and results.

Reads/writes: the sqlite file at `path` (plus its -wal/-shm companions); `export_parquet` / `import_parquet` write and
read a `datasets`-loadable parquet file; `import_paper_cache` reads the MMSearch-R1 released image-search cache
(a pickled or JSON dict keyed by data_id, see `pipeline.search.paper_cache`). The `image_urls` table remembers where
a query image was uploaded (by the sha256 of its bytes), so Google Lens gets one public URL per image, ever.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from pipeline.search.types import SearchHit, SearchResult, sha256_hex

PAPER_REPLAY_BACKEND = "paper_replay"
PAPER_REPLAY_VERSION = "mmsearch-r1-release-1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
  key TEXT PRIMARY KEY, tool TEXT NOT NULL, backend TEXT NOT NULL, backend_version TEXT NOT NULL,
  input TEXT NOT NULL, query TEXT NOT NULL, k INTEGER NOT NULL, hits TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (sha TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS failures (
  key TEXT PRIMARY KEY, tool TEXT NOT NULL, backend TEXT NOT NULL, backend_version TEXT NOT NULL,
  input TEXT NOT NULL, query TEXT NOT NULL, error TEXT NOT NULL, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS image_urls (sha TEXT NOT NULL, destination TEXT NOT NULL, url TEXT NOT NULL,
  PRIMARY KEY (sha, destination));
"""


def cache_key(tool: str, backend: str, backend_version: str, normalized_input: str) -> str:
    """Content address of a call: sha256 over the JSON list [tool, backend, backend_version, normalized_input]."""
    return sha256_hex(json.dumps([tool, backend, backend_version, normalized_input], ensure_ascii=False))


def paper_input(data_id: str) -> str:
    """Normalised input of a paper-cache entry: the paper keyed its image-search cache by the item's data_id."""
    return f"data_id={data_id}"


class SearchCache:
    """sqlite-backed cache; one connection per thread and process (safe to share the object across threads)."""

    def __init__(self, path: str | os.PathLike, busy_timeout_s: float = 60.0):
        self.path = Path(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._con().executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"SearchCache({str(self.path)!r})"

    # -- connections -------------------------------------------------------------------------------------------
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None or getattr(self._local, "pid", None) != os.getpid():
            con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
            con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con, self._local.pid = con, os.getpid()
        return con

    class _Tx:
        def __init__(self, con: sqlite3.Connection):
            self.con = con

        def __enter__(self) -> sqlite3.Connection:
            self.con.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks between processes
            return self.con

        def __exit__(self, exc_type, exc, tb) -> None:
            self.con.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> "_Tx":
        return self._Tx(self._con())

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # -- read / write ------------------------------------------------------------------------------------------
    def get(self, key: str, k: int | None = None) -> SearchResult | None:
        """The cached result for `key` (first `k` hits), or None. An entry stored for fewer than `k` requested
        results does not answer a call for more (it is a miss)."""
        row = self._con().execute("SELECT tool, backend, query, k, hits FROM results WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        tool, backend, query, stored_k, hits_json = row
        if k is not None and stored_k < k:
            return None
        hits = []
        for h in json.loads(hits_json):
            thumb = None
            if h.get("thumbnail_sha"):
                b = self._con().execute("SELECT data FROM blobs WHERE sha=?", (h["thumbnail_sha"],)).fetchone()
                thumb = bytes(b[0]) if b else None
            hits.append(SearchHit(title=h["title"], url=h["url"], snippet=h["snippet"], thumbnail=thumb))
        if k is not None:
            hits = hits[:k]
        return SearchResult(tool=tool, query=query, hits=hits, cache_key=key, from_cache=True, backend=backend)

    def put(self, key: str, tool: str, backend: str, backend_version: str, normalized_input: str, query: str,
            k: int, hits: list[SearchHit]) -> None:
        """Store a successful result (replacing any older one) and clear a recorded failure for the same key."""
        stored, blobs = [], []
        for h in hits:
            sha = ""
            if h.thumbnail:
                sha = sha256_hex(h.thumbnail)
                blobs.append((sha, sqlite3.Binary(h.thumbnail)))
            stored.append({"title": h.title, "url": h.url, "snippet": h.snippet, "thumbnail_sha": sha})
        with self._tx() as con:
            con.executemany("INSERT OR IGNORE INTO blobs(sha, data) VALUES (?, ?)", blobs)
            con.execute(
                "INSERT OR REPLACE INTO results(key, tool, backend, backend_version, input, query, k, hits) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, tool, backend, backend_version, normalized_input, query, int(k), json.dumps(stored, ensure_ascii=False)),
            )
            con.execute("DELETE FROM failures WHERE key=?", (key,))

    def record_failure(self, key: str, tool: str, backend: str, backend_version: str, normalized_input: str,
                       query: str, error: str) -> None:
        """Remember that a call failed (with the last error); failures are never returned by `get`."""
        with self._tx() as con:
            con.execute(
                "INSERT INTO failures(key, tool, backend, backend_version, input, query, error, count) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT(key) DO UPDATE SET error=excluded.error, count=count+1",
                (key, tool, backend, backend_version, normalized_input, query, error),
            )

    def failure(self, key: str) -> str | None:
        row = self._con().execute("SELECT error FROM failures WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def stats(self) -> dict[str, int]:
        con = self._con()
        return {
            "entries": con.execute("SELECT COUNT(*) FROM results").fetchone()[0],
            "failures": con.execute("SELECT COUNT(*) FROM failures").fetchone()[0],
            "thumbnails": con.execute("SELECT COUNT(*) FROM blobs").fetchone()[0],
        }

    def keys(self) -> list[str]:
        return [r[0] for r in self._con().execute("SELECT key FROM results ORDER BY key")]

    # -- parquet export / import -------------------------------------------------------------------------------
    def _rows(self) -> Iterator[dict[str, Any]]:
        con = self._con()
        for key, tool, backend, version, inp, query, k, hits_json in con.execute(
            "SELECT key, tool, backend, backend_version, input, query, k, hits FROM results ORDER BY key"
        ):
            hits = []
            for h in json.loads(hits_json):
                thumb = None
                if h["thumbnail_sha"]:
                    b = con.execute("SELECT data FROM blobs WHERE sha=?", (h["thumbnail_sha"],)).fetchone()
                    thumb = {"bytes": bytes(b[0]), "path": None} if b else None
                hits.append({"title": h["title"], "url": h["url"], "snippet": h["snippet"], "thumbnail": thumb})
            yield {"key": key, "tool": tool, "backend": backend, "backend_version": version, "input": inp,
                   "query": query, "k": k, "hits": hits}

    def export_parquet(self, path: str | os.PathLike, batch: int = 1000) -> int:
        """Write every successful entry, sorted by key, to one parquet file loadable with
        `datasets.load_dataset("parquet", data_files=path)` (features: EXPORT_FEATURES). Returns the row count."""
        import datasets
        import pyarrow.parquet as pq

        features = export_features()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        n, buf, writer = 0, [], None
        try:
            def flush() -> None:
                nonlocal writer, buf
                table = datasets.Dataset.from_list(buf, features=features).data.table
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table, row_group_size=256)
                buf = []

            for row in self._rows():
                buf.append(row)
                n += 1
                if len(buf) >= batch:
                    flush()
            if buf or writer is None:
                if not buf:
                    table = features.arrow_schema.empty_table()
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                    writer.write_table(table)
                else:
                    flush()
        finally:
            if writer is not None:
                writer.close()
        os.replace(tmp, path)
        return n

    def import_parquet(self, path: str | os.PathLike) -> dict[str, int]:
        """Add the entries of an exported parquet file. Rows whose key does not match their (tool, backend,
        backend_version, input) are rejected (counted, not imported). Returns {"imported", "rejected"}."""
        import pyarrow.parquet as pq

        imported = rejected = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=500):
            for row in batch.to_pylist():
                if row["key"] != cache_key(row["tool"], row["backend"], row["backend_version"], row["input"]):
                    rejected += 1
                    continue
                hits = [
                    SearchHit(h["title"] or "", h["url"] or "", h["snippet"] or "",
                              (h.get("thumbnail") or {}).get("bytes") if h.get("thumbnail") else None)
                    for h in row["hits"] or []
                ]
                self.put(row["key"], row["tool"], row["backend"], row["backend_version"], row["input"],
                         row["query"], int(row["k"]), hits)
                imported += 1
        return {"imported": imported, "rejected": rejected}

    def import_paper_cache(self, source: str | os.PathLike | dict, fetch_thumbnail: Callable[[str], bytes | None] | None = None,
                           k: int = 5, threads: int = 8) -> dict[str, Any]:
        """Import the paper's released image-search cache: {data_id: {"tool_returned_web_title_list": [...],
        "tool_returned_images_urls": [...]}} from a dict, a .pkl (restricted unpickler, see
        `pipeline.search.paper_cache`) or a .json file.

        Each entry becomes the `paper_replay` backend's result for that data_id (key: cache_key("image_search",
        "paper_replay", PAPER_REPLAY_VERSION, "data_id=<id>")): hit titles are the web titles; an image element
        becomes the hit's thumbnail (stored once in the blob table), a URL element the hit's URL, and its thumbnail
        when `fetch_thumbnail(url)` (online, optional) downloads it. Returns counts (imported, rejected entries;
        results; thumbnails stored from images and from URLs; URL results left without an image) and `problems`:
        one line per rejected entry or unusable result, naming the data_id. Raises PaperCacheRefused (nothing
        imported) when the pickle names a class that is not allowed.
        """
        from pipeline.search import paper_cache as pc

        data = source if isinstance(source, dict) else pc.read_paper_cache(source)
        entries, problems = {}, []
        for data_id in sorted(data, key=str):
            lists = pc.entry_lists(data[data_id])
            if isinstance(lists, str):
                problems.append(f"data_id {data_id}: rejected: {lists}")
            else:
                entries[str(data_id)] = lists
        urls = [x for _, images in entries.values() for x in images if isinstance(x, str)]
        fetched = pc.fetch_all(urls, fetch_thumbnail, threads) if fetch_thumbnail else {}
        counts = {"results": 0, "thumbnails_from_images": 0, "thumbnails_from_urls": 0, "urls_without_image": 0}
        for data_id, (titles, images) in entries.items():
            hits, probs = pc.paper_hits(titles, images, fetched)
            problems += [f"data_id {data_id}: {p}" for p in probs]
            for h, img in zip(hits, images):
                counts["thumbnails_from_urls" if isinstance(img, str) else "thumbnails_from_images"] += bool(h.thumbnail)
                counts["urls_without_image"] += isinstance(img, str) and not h.thumbnail
            counts["results"] += len(hits)
            inp = paper_input(data_id)
            key = cache_key("image_search", PAPER_REPLAY_BACKEND, PAPER_REPLAY_VERSION, inp)
            self.put(key, "image_search", PAPER_REPLAY_BACKEND, PAPER_REPLAY_VERSION, inp, f"data_id {data_id}",
                     max(k, len(hits)), hits)
        return {"imported": len(entries), "rejected": len(data) - len(entries), **counts, "problems": problems}

    # -- public URLs of query images (Google Lens needs one) ---------------------------------------------------
    def image_url(self, sha: str, destination: str) -> str | None:
        """The public URL an image (sha256 of its bytes) was uploaded to at `destination`, or None."""
        row = self._con().execute("SELECT url FROM image_urls WHERE sha=? AND destination=?", (sha, destination)).fetchone()
        return row[0] if row else None

    def put_image_url(self, sha: str, destination: str, url: str) -> None:
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO image_urls(sha, destination, url) VALUES (?, ?, ?)", (sha, destination, url))


def private_copy(search: Any, folder: str | os.PathLike, root: str | os.PathLike = ".") -> Any:
    """SearchParams whose cache is a fresh copy of the shared one (empty when there is none), at
    <folder>/search_cache.sqlite; a relative cache path is read from `root`. Stages whose dependency is the shared
    cache (train, reprobe, evaluate) search through such a copy, so the shared cache is only read.

    A file copy of the database and its write-ahead log, without opening the source: opening it, even read-only,
    would leave -shm/-wal files beside it and change the stage's dependency."""
    import dataclasses
    import shutil

    src, dst = Path(root) / search.cache.path, Path(folder).resolve() / "search_cache.sqlite"
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(str(dst) + suffix).unlink(missing_ok=True)
    if src.exists():
        shutil.copyfile(src, dst)
        if Path(str(src) + "-wal").exists():  # committed pages not yet checkpointed: sqlite replays them on open
            shutil.copyfile(str(src) + "-wal", str(dst) + "-wal")
    return dataclasses.replace(search, cache=dataclasses.replace(search.cache, path=str(dst)))


def export_features():
    """HF features of an exported cache (one row per cached call)."""
    import datasets

    return datasets.Features({
        "key": datasets.Value("string"),
        "tool": datasets.Value("string"),
        "backend": datasets.Value("string"),
        "backend_version": datasets.Value("string"),
        "input": datasets.Value("string"),
        "query": datasets.Value("string"),
        "k": datasets.Value("int32"),
        "hits": datasets.List({
            "title": datasets.Value("string"),
            "url": datasets.Value("string"),
            "snippet": datasets.Value("string"),
            "thumbnail": datasets.Image(),
        }),
    })

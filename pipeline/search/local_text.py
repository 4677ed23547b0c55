"""Local text search: BM25 over a passage corpus in a sqlite FTS5 index, optionally re-ranked with MiniLM.

Why sqlite FTS5: it ships with Python (no extension download, unlike DuckDB FTS offline), is one file that DVC can
track, builds 1M passages in about a minute, answers in a few ms with `bm25()` ranking and is safe for many
concurrent readers (see bench/bench_search.py for the figures).

Reads: passages parquet (passage_id, title, text, url, entity, license) at build time; `<index>/text/passages.sqlite`
and `manifest.json` at query time. Writes: the index folder (build only).
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from pipeline.search.backends import Backend
from pipeline.search.types import SearchError, SearchHit

TEXT_INDEX_VERSION = "fts5-bm25-v2"
# A term in more documents than this is "frequent": it still narrows an all-words (AND) match, but the any-word
# (OR) fallback leaves it out, since ranking every document that contains it costs a scan of most of the corpus
# while its BM25 idf is small. Queries made only of frequent terms rank their first FREQUENT_CAP matches.
FREQUENT_MIN_DF, FREQUENT_FRACTION, FREQUENT_CAP = 2000, 0.002, 2000
POOL = 50  # BM25 candidates re-ordered by how many query words they contain
PASSAGE_COLUMNS = ("passage_id", "title", "text", "url", "entity", "license")
TITLE_WEIGHT, TEXT_WEIGHT = 4.0, 1.0
TOKENIZER = "porter unicode61 remove_diacritics 2"
STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have how i in into is it its of on or that the their "
    "this to was were what when where which who whom whose why will with you your".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def query_terms(query: str) -> list[str]:
    """Content words of a query, in order, without duplicates; all words when every one is a stopword."""
    words = [w for w in _WORD.findall(query.casefold()) if w]
    content = [w for w in words if w not in STOPWORDS] or words
    return list(dict.fromkeys(content))


def cut_snippet(text: str, limit: int) -> str:
    """The passage's first `limit` characters, ending at a sentence end when one is in the second half."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: end + 1] if end >= limit // 2 else cut.rstrip() + "…"


def build_text_index(rows: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike, corpus_sha: str,
                     total: int | None = None, progress=None) -> dict[str, Any]:
    """Build `out_dir/passages.sqlite` (FTS5) + `manifest.json` from passage rows; atomic (tmp file + rename).

    Rows missing a passage_id or text, or repeating a passage_id, are skipped and returned in `excluded`
    as (passage_id or position, reason) pairs so the caller can write them to its exclusion table.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "passages.sqlite.tmp"
    tmp.unlink(missing_ok=True)
    t0 = time.time()
    con = sqlite3.connect(tmp)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute(
        "CREATE VIRTUAL TABLE passages USING fts5(title, text, passage_id UNINDEXED, url UNINDEXED, "
        f"entity UNINDEXED, license UNINDEXED, tokenize='{TOKENIZER}')"
    )
    con.execute(f"INSERT INTO passages(passages, rank) VALUES('rank', 'bm25({TITLE_WEIGHT}, {TEXT_WEIGHT})')")
    seen: set[str] = set()
    excluded: list[tuple[str, str]] = []
    batch: list[tuple] = []
    n = 0
    bar = progress(total=total, desc="text index", unit="passage") if progress else None
    for i, row in enumerate(rows):
        pid = str(row.get("passage_id") or "")
        text = str(row.get("text") or "").strip()
        if not pid:
            excluded.append((f"row {i}", "passage_id_missing"))
        elif pid in seen:
            excluded.append((pid, "passage_id_duplicate"))
        elif not text:
            excluded.append((pid, "text_empty"))
        else:
            seen.add(pid)
            batch.append((str(row.get("title") or ""), text, pid, str(row.get("url") or ""),
                          str(row.get("entity") or ""), str(row.get("license") or "")))
        if len(batch) >= 10000:
            con.executemany("INSERT INTO passages(title, text, passage_id, url, entity, license) VALUES (?,?,?,?,?,?)", batch)
            n += len(batch)
            if bar:
                bar.update(len(batch))
            batch = []
    if batch:
        con.executemany("INSERT INTO passages(title, text, passage_id, url, entity, license) VALUES (?,?,?,?,?,?)", batch)
        n += len(batch)
        if bar:
            bar.update(len(batch))
    if bar:
        bar.close()
    con.execute("INSERT INTO passages(passages) VALUES('optimize')")
    frequent_df = add_term_stats(con, n)
    con.commit()
    con.execute("VACUUM")
    con.close()
    os.replace(tmp, out_dir / "passages.sqlite")
    manifest = {
        "kind": "text",
        "index_version": TEXT_INDEX_VERSION,
        "tokenizer": TOKENIZER,
        "weights": {"title": TITLE_WEIGHT, "text": TEXT_WEIGHT},
        "corpus_sha256": corpus_sha,
        "passages": n,
        "excluded": len(excluded),
        "frequent_df": frequent_df,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {**manifest, "build_s": round(time.time() - t0, 2), "bytes": (out_dir / "passages.sqlite").stat().st_size,
            "excluded_rows": excluded}


def add_term_stats(con: sqlite3.Connection, n_docs: int) -> int:
    """Store the document frequency of every frequent term (table frequent_terms); returns the threshold."""
    threshold = max(FREQUENT_MIN_DF, int(n_docs * FREQUENT_FRACTION))
    con.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, passages, 'row')")
    con.execute("CREATE TABLE IF NOT EXISTS frequent_terms(term TEXT PRIMARY KEY, df INTEGER NOT NULL) WITHOUT ROWID")
    con.execute("DELETE FROM frequent_terms")
    con.execute("INSERT INTO frequent_terms SELECT term, doc FROM temp.vocab WHERE doc > ?", (threshold,))
    con.execute("DROP TABLE temp.vocab")
    return threshold


class TextIndex:
    """Read-only BM25 search over a built index; one sqlite connection per thread."""

    def __init__(self, index_dir: str | os.PathLike):
        self.dir = Path(index_dir)
        self.db = self.dir / "passages.sqlite"
        if not self.db.exists():
            raise FileNotFoundError(
                f"text index {str(self.db)!r} not found; build it with `python -m stages index` (needs data/corpora/passages.parquet)"
            )
        self._local = threading.local()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(f"file:{self.db}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            con.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache per connection
            # the index's own tokenizer, on a scratch table: maps query words to the stems the index stores
            con.execute(f"CREATE VIRTUAL TABLE temp.qtok USING fts5(x, tokenize='{TOKENIZER}')")
            con.execute("CREATE VIRTUAL TABLE temp.qtok_terms USING fts5vocab(temp, qtok, 'instance')")
            self._local.con = con
        return con

    def _frequent(self, words: list[str]) -> set[str]:
        """The words whose stem is a frequent term of the index."""
        con = self._con()
        con.executemany("INSERT INTO temp.qtok(rowid, x) VALUES (?, ?)", list(enumerate(words)))
        stems = con.execute("SELECT doc, term FROM temp.qtok_terms").fetchall()
        con.execute("DELETE FROM temp.qtok")
        frequent = set()
        for i, stem in stems:
            if con.execute("SELECT 1 FROM frequent_terms WHERE term=?", (stem,)).fetchone():
                frequent.add(words[i])
        return frequent

    def _match_capped(self, expr: str, k: int) -> list[tuple]:
        rows = self._con().execute(
            "SELECT passage_id, title, text, url, entity, bm25(passages, ?, ?) FROM passages WHERE passages MATCH ? LIMIT ?",
            (TITLE_WEIGHT, TEXT_WEIGHT, expr, FREQUENT_CAP),
        ).fetchall()
        return sorted(rows, key=lambda r: r[5])[:k]

    def _match(self, expr: str, limit: int) -> list[tuple]:
        return self._con().execute(
            "SELECT passage_id, title, text, url, entity, rank FROM passages WHERE passages MATCH ? ORDER BY rank LIMIT ?",
            (expr, limit),
        ).fetchall()

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        """Top-k passages for a query: BM25 candidates from its non-frequent words (all of them, then any), those
        containing more of the query's words first, BM25 order within; see FREQUENT_MIN_DF."""
        terms = query_terms(query)
        if not terms:
            return []
        frequent = self._frequent(terms)
        rare = [t for t in terms if t not in frequent]
        if not rare:  # only very common words: rank a capped set of matches
            rows = self._match_capped(" AND ".join(f'"{t}"' for t in terms), k)
            if len(rows) < k and len(terms) > 1:
                have = {r[0] for r in rows}
                rows += [r for r in self._match_capped(" OR ".join(f'"{t}"' for t in terms), k + len(rows))
                         if r[0] not in have][: k - len(rows)]
            return self._dicts(rows)
        # candidates from the rare words (fast, exact BM25 over them), then documents holding more of the query's
        # words (frequent ones included) first, BM25 order within
        pool = max(POOL, k)
        rows = self._match(" AND ".join(f'"{t}"' for t in rare), pool)
        if len(rows) < pool and len(rare) > 1:
            have = {r[0] for r in rows}
            rows += [r for r in self._match(" OR ".join(f'"{t}"' for t in rare), pool) if r[0] not in have]
        words = set(terms)

        def coverage(r: tuple) -> int:
            return len(words & set(_WORD.findall(f"{r[1]} {r[2]}".casefold())))

        rows.sort(key=lambda r: (-coverage(r), r[5]))
        return self._dicts(rows[:k])

    @staticmethod
    def _dicts(rows: list[tuple]) -> list[dict[str, Any]]:
        return [{"passage_id": r[0], "title": r[1], "text": r[2], "url": r[3], "entity": r[4], "score": -r[5]} for r in rows]

    def __len__(self) -> int:
        return self._con().execute("SELECT COUNT(*) FROM passages").fetchone()[0]


class LocalTextBackend(Backend):
    """text_search over the local FTS5 index (params: pipeline.search.config.LocalParams)."""

    tool = "text_search"
    name = "local"

    def __init__(self, index_dir: str | os.PathLike, params):
        self.index_dir = Path(index_dir)
        self.params = params
        self._index: TextIndex | None = None
        self._embedder = None
        self._lock = threading.Lock()

    def version(self) -> str:
        manifest = self.index_dir / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"text index manifest {str(manifest)!r} not found; run `python -m stages index`")
        m = json.loads(manifest.read_text(encoding="utf-8"))
        rerank = f"+rerank-minilm{self.params.rerank_pool}" if self.params.rerank else ""
        return f"{m['index_version']}+corpus-{m['corpus_sha256'][:12]}{rerank}+snip{self.params.snippet_chars}"

    def index(self) -> TextIndex:
        with self._lock:
            if self._index is None:
                self._index = TextIndex(self.index_dir)
            return self._index

    def search(self, value: Any, k: int, context: Mapping[str, Any] | None = None) -> list[SearchHit]:
        if not isinstance(value, str):
            raise ValueError(f"text_search needs a string query, got {type(value).__name__}")
        pool = max(k, self.params.rerank_pool) if self.params.rerank else k
        try:
            rows = self.index().search(value, pool)
        except sqlite3.Error as exc:
            raise SearchError(f"local text index error for query {value[:80]!r}: {exc}") from None
        if self.params.rerank and len(rows) > 1:
            rows = self._rerank(value, rows)
        return [SearchHit(title=r["title"], url=r["url"], snippet=cut_snippet(r["text"], self.params.snippet_chars))
                for r in rows[:k]]

    def _rerank(self, query: str, rows: list[dict]) -> list[dict]:
        from pipeline.search.embed import shared_text_embedder

        emb = shared_text_embedder(self.params.threads)
        vecs = emb.embed([query] + [f"{r['title']}. {r['text'][:1000]}" for r in rows])
        sims = vecs[1:] @ vecs[0]
        order = sorted(range(len(rows)), key=lambda i: (-float(sims[i]), i))
        return [rows[i] for i in order]


def iter_parquet_rows(path: str | os.PathLike, columns: Iterable[str], batch_size: int = 4096) -> Iterator[dict]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=batch_size, columns=list(columns)):
        yield from batch.to_pylist()


def corpus_fingerprint(path: str | os.PathLike) -> str:
    return file_sha256(path)


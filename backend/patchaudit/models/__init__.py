"""Model loading through TransformerLens's TransformerBridge.

``load_model(source)`` takes "bundled" (the project's own model, offline), a TransformerLens /
Hugging Face model name, a local Hugging Face directory, or a ``transformers.PreTrainedModel``.
The bridge runs eager attention, which double backward needs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"


class ModelLoadError(ValueError):
    """A model could not be loaded; the message says why and what to do."""


#: A model directory larger than this enters a fingerprint by its files' sizes and
#: modification times, not their content (the API computes it on a request).
FINGERPRINT_HASH_LIMIT = 64 * 2**20
_fingerprints: dict[tuple, str] = {}


def fingerprint(name: str) -> str:
    """What identifies the weights behind a model name: for "bundled" and a local directory,
    a SHA-256 over its files (name, size, and their content where the directory holds at most
    64 MiB; else their modification times); "" for a hub name (the name alone). Stored results
    and cached activations are keyed on it, so a retrained or replaced model never serves the
    numbers of the one before. Kept per process until a file changes."""
    path = BUNDLED_DIR if name == "bundled" else Path(name)
    if not path.is_dir():
        return ""
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    stats = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    key = (str(path.resolve()), stats)
    if key not in _fingerprints:
        h = hashlib.sha256()
        by_content = sum(size for _, size, _ in stats) <= FINGERPRINT_HASH_LIMIT
        for p, (fname, size, mtime) in zip(files, stats, strict=True):
            h.update(f"{fname}\0{size}\0".encode())
            if by_content:
                h.update(hashlib.sha256(p.read_bytes()).digest())
            else:
                h.update(str(mtime).encode())
        _fingerprints[key] = h.hexdigest()[:16]
    return _fingerprints[key]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _boot(name_or_dir: str, device, dtype, hf_model=None, tokenizer=None):
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(
        name_or_dir, device=device, dtype=dtype, hf_model=hf_model, tokenizer=tokenizer
    )


def _looks_like_path(source: str) -> bool:
    """A name that can only be a directory (a hub id is "name" or "org/name")."""
    if source.startswith(("/", "./", "../", "~", ".\\")) or "\\" in source:
        return True
    if source.count("/") > 1 or Path(source).suffix in (".safetensors", ".bin", ".pt"):
        return True
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(source)
    except ImportError:  # pragma: no cover - transformers brings huggingface_hub
        return False
    except ValueError:  # HFValidationError: not a hub id, so it was meant as a path
        return True
    return False


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _in_hub_cache(name: str) -> bool:
    """Whether the hub cache (HF_HUB_CACHE, else HF_HOME/hub, read now) holds its config."""
    hub = os.environ.get("HF_HUB_CACHE") or (
        str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None
    )
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json", cache_dir=hub), str)
    except (ImportError, ValueError, OSError):
        return False


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """(True, host) when a TCP connection to the hub's host opens within ``timeout``; else
    (False, why). The hub client itself retries a dead network for about 30 s."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, host
    except OSError as e:
        return False, f"{host}:{port} cannot be reached ({e.__class__.__name__}: {e})"


def _check_hub_name(source: str) -> None:
    """Before the hub client is asked for ``source``: a path that does not exist, or a hub
    model that is not cached while offline, fails at once with what to do."""
    if _looks_like_path(source):
        raise ModelLoadError(
            f"the directory {source!r} does not exist: give an existing Hugging Face model "
            "directory (with config.json), 'bundled', or a hub model name such as 'gpt2'"
        )
    if _in_hub_cache(source):
        return
    if _hub_offline():
        raise ModelLoadError(
            f"cannot load model {source!r}: HF_HUB_OFFLINE is set and it is neither a local "
            "directory nor in the local Hugging Face cache; download it once with network "
            "access (unset HF_HUB_OFFLINE), or give a local model directory"
        )
    ok, why = hub_reachable()
    if not ok:
        raise ModelLoadError(
            f"cannot load model {source!r}: no network ({why}) and it is neither a local "
            "directory nor in the local Hugging Face cache; connect to the network, or give a "
            "local model directory"
        )


def placeholder_tokenizer(vocab_size: int):
    """A tokenizer for models that ship none (random-initialised configs, bare weight
    directories): token i is spelled ``<i>``. Prompts for such models come as token ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<{i}>": i for i in range(vocab_size)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<0>")
    tok.patchaudit_placeholder = True  # "<0>" is a real token here, not an unknown word
    return tok


def _has_tokenizer(path: Path) -> bool:
    return any(
        (path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    )


def _load_local(path: Path, device, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model directory")
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    if _has_tokenizer(path):
        tok = AutoTokenizer.from_pretrained(str(path))
    else:
        tok = placeholder_tokenizer(hf.config.vocab_size)
    return _boot(str(path), device, dtype, hf_model=hf.to(device), tokenizer=tok)


def _load_object(hf, device, dtype, tokenizer=None):
    """A transformers PreTrainedModel: the bridge reads its config from a local copy, so no
    hub access is needed; the tokenizer comes from its source directory when there is one."""
    import tempfile

    from transformers import AutoTokenizer

    src = Path(str(getattr(hf.config, "_name_or_path", "") or ""))
    if tokenizer is None and str(src) and src.is_dir() and _has_tokenizer(src):
        tokenizer = AutoTokenizer.from_pretrained(str(src))
    if tokenizer is None:
        tokenizer = placeholder_tokenizer(hf.config.vocab_size)
    with tempfile.TemporaryDirectory(prefix="patchaudit-cfg-") as d:
        hf.config.save_pretrained(d)
        return _boot(
            d, device, dtype, hf_model=hf.to(device=device, dtype=dtype), tokenizer=tokenizer
        )


def load_model(source="bundled", device=None, dtype: torch.dtype = torch.float32):
    """Load a model as a TransformerBridge on ``device`` (CUDA when present, else CPU)."""
    device = torch.device(device) if device is not None else default_device()
    try:
        if not isinstance(source, str):
            from transformers import PreTrainedModel

            if not isinstance(source, PreTrainedModel):
                raise ModelLoadError(
                    f"cannot load a model from a {type(source).__name__}: pass 'bundled', a model "
                    "name, a local directory or a transformers PreTrainedModel"
                )
            model = _load_object(source, device, dtype)
        elif source == "bundled":
            if not (BUNDLED_DIR / "model.safetensors").exists():
                raise ModelLoadError(
                    f"the bundled model is missing from {BUNDLED_DIR}: run "
                    "`python -m patchaudit.models.train_bundled`"
                )
            model = _load_local(BUNDLED_DIR, device, dtype)
        elif source == "planted":
            from . import planted

            model = planted.load(device, dtype)
        elif Path(source).expanduser().is_dir():
            model = _load_local(Path(source).expanduser(), device, dtype)
        else:
            _check_hub_name(source)  # a missing directory or no network: say so at once
            model = _boot(source, device, dtype)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, ImportError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "the Hugging Face hub is unreachable (or HF_HUB_OFFLINE=1) and the model is not in the "
            "local cache"
            if offline
            or "connect" in str(e).lower()
            or "offline" in str(e).lower()
            or "couldn't" in str(e).lower()
            or "not a valid model" in str(e).lower()
            or "does not appear" in str(e).lower()
            or "is not a local folder" in str(e).lower()
            else str(e).splitlines()[0][:200]
        )
        raise ModelLoadError(f"cannot load model {source!r}: {hint}") from e
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    # the name the defaults (bound calibration) and the cache key use
    model.patchaudit_name = source if isinstance(source, str) else "object"
    return model


def config_params(source: str) -> int | None:
    """Parameters a model has by its ``config.json`` (a local directory, or the hub's small
    config file; no weights are fetched). None when no config can be read."""
    try:
        p = Path(source).expanduser()
        if p.is_dir():
            import json

            cfg = json.loads((p / "config.json").read_text())
        else:
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(source, trust_remote_code=False).to_dict()
    except Exception as e:
        log.debug("no config for %s: %s", source, e)
        return None

    def get(*names: str, default: int = 0) -> int:
        for n in names:
            v = cfg.get(n) or (cfg.get("text_config") or {}).get(n)
            if isinstance(v, int):
                return v
        return default

    d = get("hidden_size", "n_embd", "d_model")
    layers = get("num_hidden_layers", "n_layer", "n_layers")
    ff = get("intermediate_size", "n_inner", "d_mlp", default=4 * d)
    vocab = get("vocab_size", "d_vocab")
    if not d or not layers:
        return None
    return layers * (4 * d * d + 3 * d * ff) + 2 * vocab * d


FEATURED = (
    ("gpt2", "GPT-2 small, 124M, 12 layers x 12 heads"),
    ("gpt2-medium", "GPT-2 medium, 355M, 24 x 16"),
    ("gpt2-xl", "GPT-2 XL, 1.5B, 48 x 25"),
    ("EleutherAI/pythia-160m", "Pythia 160M (GPT-NeoX), 12 x 12"),
    ("EleutherAI/pythia-1.4b", "Pythia 1.4B (GPT-NeoX), 24 x 16"),
    ("google/gemma-2-2b", "Gemma-2 2B, 26 x 8"),
    ("google/gemma-2-9b", "Gemma-2 9B, 42 x 16"),
    ("meta-llama/Llama-3.2-1B", "Llama 3.2 1B, 16 x 32"),
)


def supported_model_names() -> list[str]:
    """Every model name TransformerLens's bridge supports (the default service allowlist)."""
    try:
        from transformer_lens.model_bridge import TransformerBridge

        return [str(n) for n in TransformerBridge.list_supported_models()]  # type: ignore[attr-defined]
    except Exception as e:  # pragma: no cover - depends on the TransformerLens version
        log.debug("no TransformerLens model list: %s", e)
        return [n for n, _ in FEATURED]


def list_models() -> list[dict]:
    """Models offered in the UI: the bundled one first, then a few hub models (they need the
    hub or a local Hugging Face cache)."""
    out = [
        {
            "name": "bundled",
            "description": "patchaudit's own small GPT-2-style model (6 layers x 8 heads), "
            "trained on IOI, induction and greater-than (offline, CPU-friendly)",
            "bundled": True,
        }
    ]
    out.append(
        {
            "name": "planted",
            "description": "a 3 x 4-head GPT-2 with hand-set weights and a known induction "
            "circuit (ground truth in models/planted/ground_truth.json; task 'planted')",
            "bundled": True,
        }
    )
    out += [{"name": n, "description": d, "bundled": False} for n, d in FEATURED]
    return out


from . import planted as planted  # noqa: E402  (pa.models.planted.ground_truth())

"""One door for NEPA weights: every checkpoint format a user holds, recognised, mapped and reported.

Formats: the public release's Hugging Face model directories (config.json + model.safetensors /
pytorch_model.bin / pytorch_model_ema.bin), single .safetensors files, our own checkpoints
(``nepa-eval convert`` output, pretraining and fine-tuning run checkpoints), mmengine checkpoints
(``state_dict`` + ``meta``), ``{'model': ...}`` / ``{'state_dict': ...}`` / ``{'ema': ...}`` wrappers,
``module.`` / ``backbone.`` prefixes, and plain timm-style state dicts. Pickled files are read with
``weights_only=True``: a checkpoint cannot execute code.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn as nn

from .hub import HubCheckpoint, HubError, parse_hub_id, resolve as resolve_hub_id  # huggingface_hub: lazily

if TYPE_CHECKING:  # type names only: the model file imports the door, never the other way round
    from .model import NepaViT

logger = logging.getLogger("nepa")

FORMAT_TAG = "nepa-eval/1"
HF_PREFIX = "vit_nepa."
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_EMA_FILE = "pytorch_model_ema.bin"
WRAPPER_KEYS = ("state_dict", "model", "module", "model_ema", "ema", "state_dict_ema")
STRIP_PREFIXES = ("module.", "_orig_mod.", "backbone.", "model.", "encoder.")


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model; the message says what and how to fix it."""


@dataclass
class LoadReport:
    """What `from_pretrained` / `load_weights` actually did."""

    path: str
    fmt: str
    loaded: int = 0
    total: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        s = f"loaded {self.loaded}/{self.total} tensors from {self.path} [{self.fmt}]"
        if self.missing:
            s += f"; newly initialised: {_brief(self.missing)}"
        if self.unexpected:
            s += f"; ignored: {_brief(self.unexpected)}"
        for n in self.notes:
            s += f"; note: {n}"
        return s


def _brief(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


# ----------------------------------------------------------------------------------------------
# reading files safely
# ----------------------------------------------------------------------------------------------
def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """The only getattr a checkpoint may call: mmengine's HistoryBuffer pickles its bound statistics methods."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if (obj is HistoryBuffer or isinstance(obj, HistoryBuffer)) and isinstance(name, str) and not name.startswith("_"):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f"getattr({type(obj).__name__}, {name!r}) is not allowed in a checkpoint")


def _safe_globals() -> list[Any]:
    """Plain-data classes that mmengine and numpy put into checkpoints; none can run code on load."""
    allowed: list[Any] = [(_history_buffer_getattr, "builtins.getattr")]
    try:
        from mmengine.logging.history_buffer import HistoryBuffer

        allowed.append(HistoryBuffer)
    except Exception:  # mmengine is optional for the core
        pass
    try:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        allowed += [np.dtype, np.ndarray, core.multiarray._reconstruct, core.multiarray.scalar]
        allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    except Exception:
        pass
    return allowed


def register_safe_globals() -> None:
    """Let torch's weights_only loader read mmengine run checkpoints (HistoryBuffer, numpy scalars).

    This allow-lists a few data-only classes; it does not disable the weights_only protection.
    """
    torch.serialization.add_safe_globals(_safe_globals())


def read_torch_file(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True and clear messages for corrupt, truncated or unsafe files."""
    path = str(path)
    # only the globals not registered yet: leaving the context removes what it added, and would otherwise undo
    # register_safe_globals() for every later torch.load (mmengine's resume)
    registered = torch.serialization.get_safe_globals()
    extra = [g for g in _safe_globals() if g not in registered]
    try:
        with torch.serialization.safe_globals(extra):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "weights_only" in msg or "Unsupported global" in msg:
            detail = next((ln.strip() for ln in msg.splitlines() if "Unsupported global" in ln), msg.splitlines()[0])
            raise CheckpointError(
                f"{path}: refusing to unpickle objects that are not tensors or plain data ({detail[:300]}). "
                "Checkpoints are loaded with weights_only=True so that a file cannot run code; re-save it as a "
                "plain state dict or .safetensors (e.g. torch.save(model.state_dict(), ...))."
            ) from e
        raise CheckpointError(f"{path}: corrupt checkpoint, cannot unpickle ({msg}); re-download or re-save it") from e
    except Exception as e:  # the unpickler raises KeyError, EOFError, RuntimeError... on foreign bytes
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or of an unknown format: {e}). "
            "Supported: .pth/.pt/.bin (torch.save), .safetensors, or a Hugging Face model directory."
        ) from e


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: corrupt or truncated .safetensors file ({e}); re-download or re-save it") from e


# ----------------------------------------------------------------------------------------------
# recognising formats
# ----------------------------------------------------------------------------------------------
@dataclass
class RawCheckpoint:
    """A state dict as found on disk, before mapping to our names, with whatever config came along."""

    state_dict: dict[str, torch.Tensor]
    fmt: str
    hf_config: Optional[dict[str, Any]] = None
    nepa_config: Optional[dict[str, Any]] = None
    notes: list[str] = field(default_factory=list)
    source: str = ""  # what the caller named: a path or a hub id (for messages)
    hub: Optional[HubCheckpoint] = None  # what a Hugging Face id resolved to


def _file_key(path: str | os.PathLike, ema: bool) -> tuple:
    """The file (or directory), its modification time and size, and the EMA switch: a rewritten file is never
    answered with what was read of its earlier contents."""
    p = Path(path).resolve()
    st = p.stat()
    return str(p), st.st_mtime_ns, st.st_size, bool(ema)


def _copy(raw: RawCheckpoint) -> RawCheckpoint:
    """A RawCheckpoint whose dict and notes the caller may change (the tensors are shared, not copied)."""
    return replace(raw, state_dict=dict(raw.state_dict), notes=list(raw.notes))


def locate_checkpoint(path: str | os.PathLike, ema: bool = False) -> tuple[Path, Optional[HubCheckpoint]]:
    """The local file or directory a checkpoint argument stands for, and the HubCheckpoint when it was a
    Hugging Face id (OWNER/NAME, hf-hub:OWNER/NAME, OWNER/NAME@REVISION) resolved to its cached snapshot.

    A local path that exists always wins over an id of the same name; anything else is returned as given."""
    p = Path(path)
    if p.exists():
        return p, None
    try:
        ref = parse_hub_id(str(path))
        if ref is None:
            return p, None
        weights = (HF_EMA_FILE,) if ema else HF_WEIGHT_FILES
        found = resolve_hub_id(ref, weights, hint="" if ema else f"pass --ema / ema=True for {HF_EMA_FILE}")
    except HubError as e:
        raise CheckpointError(str(e)) from None
    return found.directory, found


def read_checkpoint(path: str | os.PathLike, ema: bool = False) -> RawCheckpoint:
    """Read any supported file or directory, or a Hugging Face id (see `locate_checkpoint`), into a
    RawCheckpoint (no model needed). Every call reads: a run that needs one checkpoint in two places (the task,
    then the model mmengine builds) passes a `CheckpointReads` to both."""
    p, hub = locate_checkpoint(path, ema)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p} (check the path; a Hugging Face model is named OWNER/NAME, "
                              "hf-hub:OWNER/NAME or OWNER/NAME@REVISION, or given as its local directory)")
    raw = _read_local(p, ema)
    raw.source = str(path)
    if hub is not None:
        raw.hub = hub
        raw.notes.insert(0, hub.describe())
    return raw


class CheckpointReads:
    """The checkpoints one run has read, handed from the task to the model the run builds: the task reads a file
    (`read`) to resolve the architecture it writes into the config, the model mmengine builds later takes the same
    read (`take`, given to it as ``checkpoint_reads``) instead of reading the disk again. Owned by the run and
    passed explicitly; nothing is kept between runs. A read is taken once (then released), under the name it was
    read by or, for a hub id, its snapshot directory; a file rewritten since is read anew."""

    def __init__(self) -> None:
        self._held: dict[tuple, RawCheckpoint] = {}
        self._names: dict[tuple[str, bool], tuple] = {}  # what a caller named (a hub id too) -> the file's key

    def read(self, path: str | os.PathLike, ema: bool = False) -> RawCheckpoint:
        """Read `path` (always from disk) and keep the read for one `take`; the caller gets its own copy."""
        raw = read_checkpoint(path, ema=ema)
        local = raw.hub.directory if raw.hub is not None else locate_checkpoint(path, ema)[0]
        key = _file_key(local, ema)
        self._held[key] = raw
        self._names[(str(path), bool(ema))] = key
        return _copy(raw)

    def take(self, path: str | os.PathLike, ema: bool = False) -> RawCheckpoint:
        """The read `read` kept for `path` (released now), or a fresh read when there is none or the file changed."""
        key = self._names.pop((str(path), bool(ema)), None)
        if key is None:
            p = Path(path)
            key = _file_key(p, ema) if p.exists() else None
        held = self._held.pop(key, None) if key is not None else None
        if held is not None and Path(key[0]).exists() and _file_key(key[0], ema) == key:
            self._names = {n: k for n, k in self._names.items() if k != key}
            return held
        return read_checkpoint(path, ema=ema)

    def __len__(self) -> int:
        return len(self._held)

    def __deepcopy__(self, memo: dict) -> "CheckpointReads":
        return self  # the run's, shared: a model copied with it (an EMA copy) never copies the tensors it holds


def take_checkpoint(path: str | os.PathLike, ema: bool = False,
                    reads: Optional[CheckpointReads] = None) -> RawCheckpoint:
    """`reads.take(path)` when the run passed its reads, else a plain `read_checkpoint`."""
    return reads.take(path, ema) if reads is not None else read_checkpoint(path, ema=ema)


def _read_local(p: Path, ema: bool) -> RawCheckpoint:
    """Read one existing file or model directory."""
    if p.is_dir():
        return _read_hf_dir(p, ema)
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: empty file (an interrupted download or copy?)")
    with open(p, "rb") as f:
        head = f.read(8)
    if p.suffix == ".safetensors" or _looks_like_safetensors(p, head):
        sd, meta = read_safetensors(p)
        raw = RawCheckpoint(sd, "safetensors")
        if "nepa_config" in meta:
            raw.nepa_config = json.loads(meta["nepa_config"])
            raw.fmt = "nepa-eval safetensors"
        elif (p.parent / "config.json").exists() and any(k.startswith(HF_PREFIX) for k in sd):
            raw.hf_config = json.loads((p.parent / "config.json").read_text())
            raw.fmt = "hf safetensors + config.json"
        return raw
    obj = read_torch_file(p)
    if p.name == HF_EMA_FILE or p.name in HF_WEIGHT_FILES:
        cfg_file = p.parent / "config.json"
        raw = unwrap_state_dict(obj, ema)
        if cfg_file.exists():
            raw.hf_config = json.loads(cfg_file.read_text())
        return raw
    return unwrap_state_dict(obj, ema)


def _looks_like_safetensors(p: Path, head: bytes) -> bool:
    if len(head) < 8 or head[:2] == b"PK" or head[:1] == b"\x80":
        return False
    n = int.from_bytes(head, "little")
    if not 2 <= n <= p.stat().st_size:
        return False
    with open(p, "rb") as f:
        f.seek(8)
        return f.read(1) == b"{"


def _read_hf_dir(d: Path, ema: bool) -> RawCheckpoint:
    cfg_file = d / "config.json"
    files = [HF_EMA_FILE] if ema else [*HF_WEIGHT_FILES, HF_EMA_FILE]
    weights = next((d / f for f in files if (d / f).exists()), None)
    if weights is None:
        present = sorted(x.name for x in d.iterdir())[:10]
        raise CheckpointError(f"{d}: no weights found; expected one of {files} in the directory (found: {present})")
    if weights.suffix == ".safetensors":
        sd, meta = read_safetensors(weights)
        raw = RawCheckpoint(sd, "hf directory (model.safetensors)")
        if "nepa_config" in meta:  # `nepa-eval convert --format timm`: the exact architecture rides along
            raw.nepa_config = json.loads(meta["nepa_config"])
            raw.fmt = "timm directory (model.safetensors, nepa-eval metadata)"
            return raw  # its config.json is timm's (architecture, model_args, pretrained_cfg), not the release's
    else:
        raw = unwrap_state_dict(read_torch_file(weights), ema)
        raw.fmt = f"hf directory ({weights.name})"
    if cfg_file.exists():
        try:
            raw.hf_config = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_file}: invalid JSON ({e})") from e
    else:
        raw.notes.append("no config.json: architecture inferred from tensor shapes")
    return raw


def unwrap_state_dict(obj: Any, ema: bool = False) -> RawCheckpoint:
    """Find the state dict inside the usual wrappers and remember the config stored beside it."""
    if not isinstance(obj, dict):
        if isinstance(obj, nn.Module):  # cannot happen under weights_only, kept for clarity
            obj = obj.state_dict()
        else:
            raise CheckpointError(f"unknown checkpoint format: a {type(obj).__name__}, not a dict of tensors")
    nepa_cfg = obj.get("nepa_config") if isinstance(obj.get("nepa_config"), dict) else None
    if nepa_cfg is None and isinstance(obj.get("meta"), dict) and isinstance(obj["meta"].get("nepa_config"), dict):
        nepa_cfg = obj["meta"]["nepa_config"]
    fmt = "state dict"
    if obj.get("format") == FORMAT_TAG:
        fmt = "nepa-eval checkpoint"
    elif "meta" in obj and "state_dict" in obj:
        fmt = "mmengine checkpoint"
    if fmt == "mmengine checkpoint" and isinstance(obj.get("ema_state_dict"), dict):
        return _unwrap_mmengine_ema(obj, ema, nepa_cfg)
    order = (("ema_state_dict", "model_ema", "ema", "state_dict_ema") if ema else ()) + WRAPPER_KEYS
    notes = []
    for key in order:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            if fmt == "state dict":
                fmt = f"{{'{key}': ...}}"
            return RawCheckpoint(dict(inner), fmt, nepa_config=nepa_cfg, notes=notes)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"unknown checkpoint format: no tensors found (top-level keys: {_brief(list(obj))})")
    return RawCheckpoint(tensors, fmt, nepa_config=nepa_cfg)


def _unwrap_mmengine_ema(obj: dict, ema: bool, nepa_cfg: Optional[dict[str, Any]]) -> RawCheckpoint:
    """mmengine's EMAHook swaps before saving: 'state_dict' holds the EMA weights and 'ema_state_dict' the raw
    ones (as 'module.<name>', plus a 'steps' counter). As for every other format, ema=False gives the raw
    weights and ema=True the EMA ones."""
    fmt = "mmengine checkpoint (EMAHook)"
    if ema:
        return RawCheckpoint(dict(obj["state_dict"]), fmt, nepa_config=nepa_cfg,
                             notes=["EMA weights (mmengine's 'state_dict' after EMAHook's swap)"])
    raw = {k[len("module."):]: v for k, v in obj["ema_state_dict"].items() if k.startswith("module.")}
    if not raw:
        raise CheckpointError("mmengine EMAHook checkpoint without raw weights in 'ema_state_dict'")
    return RawCheckpoint(raw, fmt, nepa_config=nepa_cfg,
                         notes=["raw weights (mmengine's 'ema_state_dict' after EMAHook's swap); ema=True for the EMA"])


# ----------------------------------------------------------------------------------------------
# mapping names and inferring the architecture
# ----------------------------------------------------------------------------------------------
_HF_BLOCK_MAP = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.attention.q_norm": "attn.q_norm",
    "attention.attention.k_norm": "attn.k_norm",
    "attention.output.dense": "attn.proj",
    "output.dense": "mlp.fc2",
}
_HF_LAYERSCALE = {"layer_scale.lambda1": "ls1.gamma", "output.layer_scale.lambda1": "ls2.gamma"}


def convert_hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the release's Hugging Face names to ours (fusing query/key/value and gate/up projections)."""
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k.startswith("fc_norm.") or k.startswith("classifier."):
            out[k.replace("classifier.", "head.")] = v
            continue
        if not k.startswith(HF_PREFIX):
            out[k] = v  # left for the unexpected-keys report
            continue
        k = k[len(HF_PREFIX):]
        if k == "embeddings.cls_token":
            out["cls_token"] = v
        elif k.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("embeddings.position_embeddings"):
            out["pos_embed"] = v
        elif k.startswith("layernorm."):
            out["norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("encoder.layer."):
            _, _, i, rest = k.split(".", 3)
            name, param = rest.rsplit(".", 1)
            if rest in _HF_LAYERSCALE:
                out[f"blocks.{i}.{_HF_LAYERSCALE[rest]}"] = v
            elif name in ("attention.attention.query", "attention.attention.key", "attention.attention.value"):
                pending.setdefault(f"blocks.{i}.attn.qkv.{param}", {})[name.rsplit(".", 1)[1]] = v
            elif name in ("intermediate.gate_proj", "intermediate.up_proj"):
                pending.setdefault(f"blocks.{i}.mlp.fc1.{param}", {})[name.rsplit(".", 1)[1]] = v
            elif name in _HF_BLOCK_MAP:
                out[f"blocks.{i}.{_HF_BLOCK_MAP[name]}.{param}"] = v
            else:
                out[HF_PREFIX + k] = v
        else:
            out[HF_PREFIX + k] = v
    for key, parts in pending.items():
        if {"query", "key", "value"} <= set(parts):
            out[key] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
        elif "up_proj" in parts and "gate_proj" in parts:
            out[key] = torch.cat([parts["gate_proj"], parts["up_proj"]], 0)  # our SwiGLU: [gate; up]
        elif set(parts) == {"up_proj"}:
            out[key] = parts["up_proj"]
        else:
            out.update({f"{key}<{n}>": t for n, t in parts.items()})  # incomplete: reported as unexpected
    return out


def strip_prefixes(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove wrapper prefixes (module., backbone., ...) that prefix the NEPA keys; report which."""
    stripped = []
    changed = True
    while changed:
        changed = False
        for pre in STRIP_PREFIXES:
            hits = [k for k in sd if k.startswith(pre)]
            core = [k for k in hits if k[len(pre):].startswith(("blocks.", "patch_embed.", "cls_token"))
                    or k[len(pre):].startswith(HF_PREFIX) or any(k[len(pre):].startswith(p) for p in STRIP_PREFIXES)]
            if core:
                sd = {(k[len(pre):] if k.startswith(pre) else k): v for k, v in sd.items()}
                stripped.append(pre)
                changed = True
    return sd, stripped


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """Translate the release's config.json into NepaConfig fields."""
    act = hf.get("hidden_act", "gelu")
    if hf.get("use_gated_mlp", False):
        mlp_type = "swiglu"
        if act not in ("silu", "swish"):
            raise CheckpointError(f"gated MLP with hidden_act={act!r} is not supported (only silu)")
    else:
        mlp_type = "gelu"
        if act not in ("gelu",):
            raise CheckpointError(f"hidden_act={act!r} is not supported for the plain MLP (only exact gelu)")
    d = dict(
        img_size=hf.get("image_size", 224), patch_size=hf.get("patch_size", 14), in_chans=hf.get("num_channels", 3),
        embed_dim=hf["hidden_size"], depth=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        mlp_hidden=hf.get("intermediate_size"), mlp_type=mlp_type, qkv_bias=hf.get("qkv_bias", True),
        qk_norm=hf.get("qk_norm", True), qk_norm_affine=hf.get("qk_norm_affine", True),
        qk_norm_bias=hf.get("qk_norm_bias", False), layerscale_init=hf.get("layerscale_value", 1e-5),
        rope_theta=hf.get("rope_theta", 100.0), rope_rescale=hf.get("pos_embed_rescale"),
        causal=hf.get("is_causal", True), drop_path_rate=hf.get("drop_path_prob", 0.0),
        norm_eps=hf.get("layer_norm_eps", 1e-12),
    )
    return d


def infer_config(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture from tensor shapes alone (our key names). Heads follow from the QK-norm size or 64-dim heads."""
    if "patch_embed.proj.weight" not in sd:
        raise CheckpointError("cannot infer the architecture: no patch_embed.proj.weight; this does not look like a "
                              "NEPA/ViT checkpoint")
    w = sd["patch_embed.proj.weight"]
    D, C, P = w.shape[0], w.shape[1], w.shape[2]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    hd = sd["blocks.0.attn.q_norm.weight"].shape[0] if "blocks.0.attn.q_norm.weight" in sd else 64
    fc1, fc2 = sd["blocks.0.mlp.fc1.weight"].shape[0], sd["blocks.0.mlp.fc2.weight"].shape[1]
    d: dict[str, Any] = dict(embed_dim=D, in_chans=C, patch_size=P, depth=depth, num_heads=max(1, D // hd),
                             mlp_hidden=fc2, mlp_type="swiglu" if fc1 == 2 * fc2 else "gelu",
                             qkv_bias="blocks.0.attn.qkv.bias" in sd,
                             layerscale_init=1e-5 if "blocks.0.ls1.gamma" in sd else None,
                             class_token="cls_token" in sd)
    if "pos_embed" in sd:
        n = sd["pos_embed"].shape[1]
        side = int(round(n ** 0.5))
        d.update(pos_embed="rope+abs", img_size=side * P)  # rope presence cannot be seen in weights
    if "head.weight" in sd:
        d["num_classes"] = sd["head.weight"].shape[0]
    return d


# ----------------------------------------------------------------------------------------------
# foreign checkpoints: named for what they are
# ----------------------------------------------------------------------------------------------
NEPA_SOURCES = ("NEPA checkpoints come from nepa-eval pretrain / cls runs (or nepa-eval convert of one) and from "
                "the public release (SixAILab/nepa-base-patch14-224, SixAILab/nepa-large-patch14-224, their -sft "
                "variants)")
NEPA_MODEL_TYPE = "vit_nepa"  # config.json model_type of the release


def _in_blocks(sd: dict[str, torch.Tensor], name: str) -> bool:
    """Whether some transformer block holds parameter `name` (e.g. 'attn.q_bias'); chunked blocks too."""
    return any(k.startswith("blocks.") and k.endswith("." + name) for k in sd)


def _is_square(n: int) -> bool:
    r = int(round(n ** 0.5))
    return r * r == n


def _class_position(sd: dict[str, torch.Tensor]) -> Optional[str]:
    """'pos_embed (1, 197, 192)' when the learned positions include the prefix tokens (class, registers), as in
    timm's ViTs; NEPA's optional learned positions cover the patch grid only, (1, N, D) with N a square."""
    pe = sd.get("pos_embed")
    if pe is None or pe.ndim != 3 or _is_square(pe.shape[1]):
        return None
    prefix = ("cls_token" in sd) + ("dist_token" in sd)
    return f"pos_embed {tuple(pe.shape)}" if prefix and _is_square(pe.shape[1] - prefix) else None


def _traits(sd: dict[str, torch.Tensor]) -> list[str]:
    """What the blocks have and NEPA's do not, or lack and NEPA's have."""
    out = []
    pos = _class_position(sd)
    if pos:
        out.append(f"learned absolute positions that include the class token ({pos})")
    if not _in_blocks(sd, "attn.q_norm.weight"):
        out.append("no QK-norm")
    if not (_in_blocks(sd, "ls1.gamma") or _in_blocks(sd, "gamma_1")):
        out.append("no LayerScale")
    return out


def identify_foreign(sd: dict[str, torch.Tensor], hf_config: Optional[dict[str, Any]] = None
                     ) -> Optional[tuple[str, str]]:
    """(what it is, why it is not NEPA) for a state dict (prefixes stripped) of another model family, else None.

    Recognised by key patterns and shapes: an MAE pretraining checkpoint (decoder_*), BEiT (relative position
    bias tables), DINOv2 (register tokens, a 2-D mask token, or LayerScale + class-token positions at patch 14),
    EVA / EVA02 (q_bias/v_bias, q_proj/k_proj/v_proj, fc1_g/fc1_x, gamma_1, rope.*), DeiT distilled (dist_token)
    and timm ViT / DeiT (learned positions over the class token), and a Hugging Face transformers model of
    another type. A genuine NEPA checkpoint has none of these.
    """
    model_type = (hf_config or {}).get("model_type")
    hf_keys = [k for k in sd if k.endswith("embeddings.patch_embeddings.projection.weight") and not k.startswith(HF_PREFIX)]
    if (model_type and model_type != NEPA_MODEL_TYPE) or hf_keys:
        name = model_type or hf_keys[0][:hf_keys[0].index("embeddings.")].rstrip(".") or "vision"
        return (f"a Hugging Face transformers {name!r} model (" + (f"config.json model_type {model_type!r}"
                if model_type else f"keys like {hf_keys[0]}") + ")",
                f"not the release's ViTNepa (model_type {NEPA_MODEL_TYPE!r}, keys vit_nepa.*)")
    if any(k.startswith(("decoder_embed", "decoder_blocks", "decoder_pred", "decoder_pos_embed")) for k in sd):
        return ("an MAE pretraining checkpoint (encoder + decoder_embed / decoder_blocks / decoder_pred)",
                ", ".join(["a masked-autoencoder ViT with its pixel decoder", *_traits(sd)]))
    if any("relative_position_bias_table" in k for k in sd):
        return ("a BEiT state dict (timm beit_* / BEiT v2 / data2vec-vision)",
                "relative position bias tables in the attention, q/v biases, LayerScale as gamma_1/gamma_2, no "
                "QK-norm; NEPA's attention has 2D RoPE after a QK-norm")
    mask = sd.get("mask_token")
    patch = sd.get("patch_embed.proj.weight")
    patch14_ls = _in_blocks(sd, "ls1.gamma") and patch is not None and patch.shape[-1] == 14
    dino = [e for e, hit in (
        ("register tokens", "register_tokens" in sd or (patch14_ls and "reg_token" in sd)),
        (f"a mask token {tuple(mask.shape) if mask is not None else ''}", mask is not None and mask.ndim == 2),
        ("LayerScale with class-token positions at patch 14", patch14_ls and _class_position(sd) is not None)) if hit]
    if dino:
        return ("a DINOv2 state dict (timm vit_*_dinov2 or the facebookresearch release: " + ", ".join(dino) + ")",
                ", ".join(["a self-distillation ViT", *_traits(sd)]))
    eva = [e for e, hit in (
        ("separate q_proj/k_proj/v_proj", _in_blocks(sd, "attn.q_proj.weight") and _in_blocks(sd, "attn.k_proj.weight")),
        ("q_bias/v_bias", _in_blocks(sd, "attn.q_bias") and _in_blocks(sd, "attn.v_bias")),
        ("a SwiGLU MLP as fc1_g/fc1_x", _in_blocks(sd, "mlp.fc1_g.weight")),
        ("a SwiGLU MLP as w1/w2/w3", _in_blocks(sd, "mlp.w1.weight") and _in_blocks(sd, "mlp.w3.weight")),
        ("LayerScale as gamma_1/gamma_2", _in_blocks(sd, "gamma_1")),
        ("rope buffers", any(k.startswith("rope.") for k in sd))) if hit]
    if eva:
        return ("an EVA / EVA02 state dict (timm eva02_* / eva_* / vit_*_rope_*, or the BAAI release: "
                + ", ".join(eva) + ")",
                ", ".join(["EVA's own attention and MLP layout", *_traits(sd)]))
    if "dist_token" in sd:
        return ("a timm DeiT distilled state dict (deit_*_distilled: dist_token, head_dist)",
                ", ".join(["a second (distillation) token and head", *_traits(sd)]))
    if _class_position(sd) is not None or "reg_token" in sd:
        return ("a timm ViT / DeiT state dict (vit_*, deit_*, or another ViT with a learned class-token position)",
                ", ".join(_traits(sd) or ["timm's ViT layout"]))
    if "head.weight" in sd and "fc_norm.weight" not in sd and "norm.weight" in sd and _in_blocks(sd, "attn.qkv.weight"):
        # every NEPA classifier pools through fc_norm; timm's class-token classifiers (DeiT III, ViT) have none
        return ("a timm ViT / DeiT III classifier (vit_*, deit3_*: a class-token head without fc_norm)",
                ", ".join(["timm's class-token pooling", *_traits(sd)]))
    return None


def refuse_foreign(raw: RawCheckpoint, sd: dict[str, torch.Tensor]) -> None:
    """Raise a CheckpointError naming the family when `sd` is another model's; checkpoints that say they are
    NEPA (our metadata, the release's config.json) are trusted."""
    if raw.nepa_config is not None or (raw.hf_config or {}).get("model_type") == NEPA_MODEL_TYPE:
        return
    found = identify_foreign(sd, raw.hf_config)
    if found is not None:
        what, why = found
        raise CheckpointError(f"{raw.source or 'state dict'}: {what}: {why}: not a NEPA backbone. {NEPA_SOURCES}. "
                              "Load this one with its own model (timm.create_model of its family, or mmseg's "
                              "config for it).")


# ----------------------------------------------------------------------------------------------
# the door
# ----------------------------------------------------------------------------------------------
def to_nepa_state_dict(raw: RawCheckpoint) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our key names and notes on what was changed, for any RawCheckpoint; another model family's state dict
    (timm ViT, EVA, DINOv2, BEiT, MAE, ...) is a CheckpointError that names it."""
    notes = list(raw.notes)
    sd, stripped = strip_prefixes(raw.state_dict)
    if stripped:
        notes.append(f"stripped prefixes {stripped}")
    if any(k.startswith(HF_PREFIX) for k in sd):
        sd = convert_hf_state_dict(sd)
    refuse_foreign(raw, sd)
    return sd, notes


def resolve_config(raw: RawCheckpoint, sd: dict[str, torch.Tensor], notes: list[str]) -> dict[str, Any]:
    """The architecture: stored with the weights (ours), from config.json (the release), or from shapes."""
    if raw.nepa_config is not None:
        cfg = dict(raw.nepa_config)
    elif raw.hf_config is not None:
        cfg = config_from_hf(raw.hf_config)
        if "head.weight" in sd:
            cfg["num_classes"] = sd["head.weight"].shape[0]
        # the release's head is mean pooling + fc_norm
        cfg["global_pool"] = "avg"
        if "pos_embed" in sd:
            cfg["pos_embed"] = "rope+abs"
    else:
        cfg = infer_config(sd)
        notes.append("architecture inferred from tensor shapes")
        if "pos_embed" in sd and not any(k.endswith("q_norm.weight") for k in sd):
            notes.append("no NEPA metadata, learned positions and no QK-norm weights: RoPE assumed on top; a timm "
                         "DeiT III / ViT backbone (no_embed_class) has this same layout and is not a NEPA backbone")
    return cfg


def load_weights(model: NepaViT, path: str | os.PathLike, strict: bool = True, ema: bool = False,
                 allow_new_head: bool = True) -> LoadReport:
    """Load any supported checkpoint into an existing model; raise CheckpointError on any real mismatch.

    Missing keys are allowed only for the classifier head (fc_norm/head) when `allow_new_head`, and for
    QK-norm weights (loaded as ones, the release's Base quirk). Everything else missing, any shape
    disagreement, or nothing matching at all, raises with the keys listed.
    """
    raw = read_checkpoint(path, ema=ema)
    sd, notes = to_nepa_state_dict(raw)
    return load_state_dict_into(model, sd, str(path), raw.fmt, notes, strict, allow_new_head)


def fill_missing_qk_norm(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> list[str]:
    """Add the QK-norm weights that `sd` lacks as ones (the release's Base pretraining config has a QK-norm
    without affine weights, which equals weight 1); returns the keys added. `own` is the model's state dict."""
    added = [k for k in own if k.endswith(("q_norm.weight", "k_norm.weight")) and k not in sd]
    for k in added:
        sd[k] = torch.ones_like(own[k])
    return added


def load_state_dict_into(model: NepaViT, sd: dict[str, torch.Tensor], path: str, fmt: str, notes: list[str],
                         strict: bool = True, allow_new_head: bool = True) -> LoadReport:
    """Load a state dict already in our key names (``to_nepa_state_dict``) into `model`, with the door's checks.

    `path` and `fmt` name the source in the report and in errors; `notes` start the report's notes.
    """
    own = model.state_dict()
    report = LoadReport(path=path, fmt=fmt, total=len(own), notes=notes)
    # the pretraining objective's mask token belongs to the trainer, not the backbone
    unexpected = [k for k in sd if k not in own and k != "mask_token"]
    if any(k.startswith(("head.", "fc_norm.")) for k in unexpected) and model.num_classes == 0:
        report.notes.append("checkpoint has a classifier head; the model was built without one (head ignored)")
        unexpected = [k for k in unexpected if not k.startswith(("head.", "fc_norm."))]
    matched = {k: v for k, v in sd.items() if k in own}
    if allow_new_head and "head.weight" in matched and matched["head.weight"].shape != own["head.weight"].shape:
        report.notes.append(f"checkpoint head has {matched['head.weight'].shape[0]} classes, the model "
                            f"{own['head.weight'].shape[0]}: head newly initialised")
        matched = {k: v for k, v in matched.items() if not k.startswith("head.")}
    if not matched:
        raise CheckpointError(
            f"{path} [{fmt}]: no tensor matched the NEPA model. The file has keys like {_brief(list(sd), 5)}; "
            f"the model expects keys like {_brief(list(own), 5)}. Is this a NEPA/ViT checkpoint?")
    bad_shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in matched.items() if v.shape != own[k].shape]
    if bad_shapes:
        raise CheckpointError(f"{path} [{fmt}]: shapes disagree with the model (wrong size or architecture?): "
                              + "; ".join(bad_shapes[:10]) + (f" (+{len(bad_shapes) - 10} more)" if len(bad_shapes) > 10 else ""))
    qk = fill_missing_qk_norm(matched, own)
    if qk:
        report.notes.append(f"{len(qk)} QK-norm weights missing in the checkpoint, loaded as ones (a no-affine "
                            "QK-norm, as in the release's Base pretraining config)")
    missing = [k for k in own if k not in matched]
    head = [k for k in missing if k.startswith(("head.", "fc_norm."))]
    rest = [k for k in missing if k not in head]
    if strict and (rest or (head and not allow_new_head)):
        raise CheckpointError(f"{path} [{fmt}]: keys missing from the checkpoint: {_brief(rest or head, 12)}. "
                              "Pass strict=False to initialise them fresh.")
    model.load_state_dict(matched, strict=False)
    report.loaded = len(matched) - len(qk)
    report.missing = missing
    report.unexpected = unexpected
    if strict and unexpected:
        raise CheckpointError(f"{path} [{fmt}]: keys the model does not have: {_brief(unexpected, 12)}. The "
                              "checkpoint's architecture differs from the model's; pass strict=False to ignore them.")
    logger.info("%s", report)
    return report




def save_checkpoint(model: NepaViT, path: str | os.PathLike, extra: Optional[dict[str, Any]] = None) -> Path:
    """Write our format: .safetensors (config in metadata) or a torch file {'format', 'nepa_config', 'model'}."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    cfg = model.cfg.to_dict()
    cfg["num_classes"], cfg["global_pool"], cfg["causal"] = model.num_classes, model.global_pool, model.causal
    tmp = p.with_name(p.name + ".tmp")
    if p.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(tmp), metadata={"format": FORMAT_TAG, "nepa_config": json.dumps(cfg)})
    else:
        torch.save({"format": FORMAT_TAG, "nepa_config": cfg, "model": sd, **(extra or {})}, tmp)
    os.replace(tmp, p)  # never leave a half-written file under the final name
    return p


def fold_layerscale(model: NepaViT) -> NepaViT:
    """Fold each LayerScale into the Linear before it (W <- diag(g) W, b <- g b); exact, and one op less."""
    with torch.no_grad():
        for blk in model.blocks:
            for ls, lin in ((blk.ls1, blk.attn.proj), (blk.ls2, blk.mlp.fc2)):
                if isinstance(ls, nn.Module) and hasattr(ls, "gamma"):
                    g = ls.gamma
                    lin.weight.mul_(g[:, None])
                    lin.bias.mul_(g)
            blk.ls1, blk.ls2 = nn.Identity(), nn.Identity()
    model.cfg.layerscale_init = None
    return model

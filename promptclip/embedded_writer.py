"""Training-only writers: the embedded tiny CLIP file and canonical safetensors headers.

Serving only reads the embedded model (`promptclip.loading`); this module is imported by
`training pretrain-tiny` and tests, never on the serving path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .loading import _SPARSE_IDS, _SPARSE_ROWS, EMBEDDED_WEIGHTS


def save_embedded_model(model: torch.nn.Module, config: dict[str, Any], path: Path = EMBEDDED_WEIGHTS,
                        extra_metadata: dict[str, str] | None = None) -> Path:
    """Save a (tiny) CLIP as fp16 safetensors with its open_clip config in the header.

    The token embedding table is mostly rows no caption ever used; only rows that differ from
    zero-mean init noise matter, so we keep just the rows in `used_token_ids` when the metadata
    names them (`extra_metadata["used_token_ids"]` as JSON), and unused rows load as zeros.
    """
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    meta = {"open_clip_config": json.dumps(config), "format": "promptclip-embedded-1"}
    meta.update(extra_metadata or {})
    if "used_token_ids" in meta:
        ids = torch.tensor(sorted(set(json.loads(meta["used_token_ids"]))), dtype=torch.int64)
        table = state.pop("token_embedding.weight")
        state[_SPARSE_IDS] = ids
        state[_SPARSE_ROWS] = table[ids].contiguous()
        meta["vocab_size"] = str(table.shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=meta)
    canonical_header(tmp)
    os.replace(tmp, path)
    return path


def canonical_header(path: Path) -> None:
    """Rewrite a safetensors header in sorted key order, so equal contents give equal bytes.

    safetensors writes `__metadata__` from a hash map, in an order that changes from process to
    process; the tensor data and offsets do not depend on the header's key order.
    """
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}) | dict(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    if len(text) > n:  # the same entries serialize to the same length; never grow the header
        raise ValueError(f"{path}: canonical header is longer than the original ({len(text)} > {n})")
    Path(path).write_bytes(raw[:8] + text.ljust(n, b" ") + raw[8 + n:])

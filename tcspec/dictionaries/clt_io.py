"""CLT files: tcspec's own folder, and circuit-tracer's cross-layer-transcoder folder.

tcspec (`save` / `load`): ``cfg.json`` (the CLTConfig, ``"kind": "clt"``, plus extra keys) and
``weights.safetensors`` holding the module's parameters by name (``W_enc [L, d, F]``,
``b_enc [L, F]``, ``W_dec.{l} [F, L - l, d]``, ``b_dec [L, d]``, ``W_skip [L, d, d]``,
``log_threshold [L, F]``); weights are written first, so a folder with a ``cfg.json`` holds
complete weights. Exact.

circuit-tracer (`export_circuit_tracer` / `load_circuit_tracer`; the layout of its
``CrossLayerTranscoder.to_safetensors`` and ``load_clt``): for each layer i,
``W_enc_{i}.safetensors`` with ``W_enc_{i} [F, d]``, ``b_enc_{i} [F]``, ``b_dec_{i} [d]``,
optional ``threshold_{i} [F]`` (JumpReLU) and ``W_skip_{i} [d, d]`` (applied ``x @ W_skip``),
and ``W_dec_{i}.safetensors`` with ``W_dec_{i} [F, L - i, d]``; ``config.yaml`` with
``model_kind: cross_layer_transcoder``, ``feature_input_hook``, ``feature_output_hook``
(relative to a block), ``model_name``, ``scan``. Weights round-trip bitwise; JumpReLU
thresholds pass through exp / log (tcspec trains log thresholds), so they round-trip to
float32 rounding (relative error about |log theta| x 1e-7). circuit-tracer's CLT is ReLU or JumpReLU: a TopK CLT is written only
when asked (``allow_topk``), with ``activation: topk`` and ``k`` in ``config.yaml`` (the keys
circuit-tracer reads for transcoder sets; its CLT loader, as of 2026-04, ignores them).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from tcspec import vocab
from tcspec.atomic import atomic_dir, atomic_write, write_json
from tcspec.dictionaries.clt import CLT, CLTConfig
from tcspec.dictionaries.families import family
from tcspec.vocab import CFG_FILE, CT_CONFIG, WEIGHTS_FILE

CT_KIND = "cross_layer_transcoder"
CT_ENC = re.compile(r"^W_enc_(\d+)\.safetensors$")


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float32).contiguous()


# ---------------------------------------------------------------------------- tcspec's own
def save(clt: CLT, dir: str | Path, extra: dict | None = None) -> None:
    """Write ``weights.safetensors`` then ``cfg.json`` (config, kind, ``extra``) into ``dir``."""
    dir = Path(dir)
    cfg = dataclasses.asdict(clt.cfg) | {"kind": vocab.CLT}
    clash = set(cfg) & set(extra or {})
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} would overwrite the CLT's config")
    tensors = {k: _cpu(v) for k, v in clt.state_dict().items()}
    atomic_write(dir / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), {"format": "pt"}))
    write_json(dir / CFG_FILE, cfg | (extra or {}))


def load_cfg(dir: str | Path) -> tuple[CLTConfig, dict]:
    """Read ``cfg.json``: the CLTConfig and the extra keys saved beside it."""
    file = Path(dir) / CFG_FILE
    raw = json.loads(file.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: a JSON {type(raw).__name__}, not a CLT config object")
    if raw.get("kind") != vocab.CLT:
        raise ValueError(f"{file}: kind {raw.get('kind')!r} is not a cross-layer transcoder")
    names = {f.name for f in dataclasses.fields(CLTConfig)}
    cfg = CLTConfig(**{k: v for k, v in raw.items() if k in names})
    return cfg, {k: v for k, v in raw.items() if k not in names | {"kind"}}


def load(dir: str | Path, device: str | torch.device = "cpu") -> CLT:
    """Rebuild a CLT from a folder written by `save`."""
    cfg, _ = load_cfg(dir)
    return _from_state(cfg, load_file(str(Path(dir) / WEIGHTS_FILE)), dir).to(device)


def _from_state(cfg: CLTConfig, state: dict[str, torch.Tensor], where) -> CLT:
    clt = CLT(cfg)
    want = clt.state_dict()
    differ = set(want) ^ set(state)
    if differ:
        raise ValueError(f"{where}: weights do not match the CLT's config: keys {sorted(differ)}")
    for k, v in state.items():
        if v.shape != want[k].shape:
            raise ValueError(
                f"{where}: `{k}` has shape {tuple(v.shape)}, want {tuple(want[k].shape)}"
            )
    clt.load_state_dict(state)
    return clt


# --------------------------------------------------------------------------- circuit-tracer
def export_circuit_tracer(
    clt: CLT, out: str | Path, *, model_name: str, scan: str | None = None, allow_topk=False
) -> Path:
    """Write `clt` as a circuit-tracer CLT folder at `out` (replaced whole, atomically)."""
    cfg, out = clt.cfg, Path(out)
    from tcspec.interop.export import set_refusal  # the one statement of the layout's limits

    why = set_refusal(list(cfg.blocks))
    if why:
        raise ValueError(why)
    if cfg.family.takes_k and not allow_topk:
        raise ValueError(
            "circuit-tracer's CrossLayerTranscoder is ReLU or JumpReLU: it would run this TopK "
            "CLT as ReLU; pass allow_topk=True to write it with `activation: topk` anyway"
        )
    config = {
        "model_name": model_name,
        "model_kind": CT_KIND,
        "feature_input_hook": cfg.in_hook,
        "feature_output_hook": cfg.out_hook,
        "scan": scan or f"./data/features/{out.name}",
    }
    if cfg.family.circuit_tracer:
        config |= {"activation": cfg.family.circuit_tracer, "k": cfg.k}
    with atomic_dir(out) as tmp:
        for i in range(cfg.n_layers):
            enc = {
                f"W_enc_{i}": _cpu(clt.W_enc[i].T),  # [F, d]
                f"b_enc_{i}": _cpu(clt.b_enc[i]),  # [F]
                f"b_dec_{i}": _cpu(clt.b_dec[i]),  # [d]
            }
            if cfg.family.thresholded:
                enc[f"threshold_{i}"] = _cpu(clt.threshold[i])  # [F]
            if cfg.skip:
                enc[f"W_skip_{i}"] = _cpu(clt.W_skip[i])  # [d, d]
            save_file(enc, str(tmp / f"W_enc_{i}.safetensors"))
            save_file({f"W_dec_{i}": _cpu(clt.W_dec[i])}, str(tmp / f"W_dec_{i}.safetensors"))
        (tmp / CT_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def read_ct_clt_config(folder: str | Path) -> dict:
    """A circuit-tracer ``config.yaml``, checked to describe a cross-layer transcoder."""
    file = Path(folder) / CT_CONFIG
    try:
        raw = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{file}: unreadable YAML: {e}") from e
    if not isinstance(raw, dict) or raw.get("model_kind") != CT_KIND:
        raise ValueError(f"{file}: `model_kind` is not `{CT_KIND}`")
    return raw


def load_circuit_tracer(folder: str | Path, device: str | torch.device = "cpu") -> CLT:
    """Read a circuit-tracer CLT folder (see the module docstring) into a CLT."""
    from tcspec.interop.circuit_tracer import ct_family  # circuit-tracer's words
    from tcspec.interop.tensors import threshold_family

    folder = Path(folder)
    config = read_ct_clt_config(folder)
    n = sorted(int(m.group(1)) for p in folder.iterdir() if (m := CT_ENC.match(p.name)))
    if not n or n != list(range(len(n))):
        raise ValueError(f"{folder}: expected W_enc_0..W_enc_<n-1>.safetensors, got {n}")
    encs = [load_file(str(folder / f"W_enc_{i}.safetensors")) for i in n]
    decs = [load_file(str(folder / f"W_dec_{i}.safetensors"))[f"W_dec_{i}"] for i in n]
    F, d = encs[0]["W_enc_0"].shape
    jump, skip = "threshold_0" in encs[0], "W_skip_0" in encs[0]
    activation = threshold_family() if jump else ct_family(config.get("activation"))
    cfg = CLTConfig(
        n_layers=len(n), d_model=d, d_sae=F, activation=activation,
        k=config.get("k") if family(activation).takes_k else None,
        in_hook=config.get("feature_input_hook", "hook_resid_mid"),
        out_hook=config.get("feature_output_hook", "hook_mlp_out"), skip=skip,
    )  # fmt: skip
    state = {
        "W_enc": torch.stack([e[f"W_enc_{i}"].T for i, e in enumerate(encs)]),  # [L, d, F]
        "b_enc": torch.stack([e[f"b_enc_{i}"] for i, e in enumerate(encs)]),  # [L, F]
        "b_dec": torch.stack([e[f"b_dec_{i}"] for i, e in enumerate(encs)]),  # [L, d]
    } | {f"W_dec.{i}": w for i, w in enumerate(decs)}
    if jump:
        state["log_threshold"] = torch.stack(
            [e[f"threshold_{i}"] for i, e in enumerate(encs)]
        ).log()
    if skip:
        state["W_skip"] = torch.stack([e[f"W_skip_{i}"] for i, e in enumerate(encs)])
    for i, e in enumerate(encs):
        extra = set(e) - {f"{k}_{i}" for k in ("W_enc", "b_enc", "b_dec", "threshold", "W_skip")}
        if extra or ("threshold_" + str(i) in e) != jump or (f"W_skip_{i}" in e) != skip:
            raise ValueError(
                f"{folder}/W_enc_{i}.safetensors: keys {sorted(e)} differ from layer 0's"
            )
    state = {k: v.float().contiguous() for k, v in state.items()}
    return _from_state(cfg, state, folder).to(device)

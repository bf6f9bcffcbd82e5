"""A dictionary's sweep: its points (list-valued fields crossed, `zip` fields paired), a
point's readable name, and a member's options at one point."""

from __future__ import annotations

import itertools

from tcspec.compute import resolve_precision
from tcspec.spec import SWEEP_FIELDS, Spec


def sweep_points(d) -> list[dict]:
    """The sweep points of a dictionary spec: list-valued fields crossed, `zip` fields paired."""
    axes = {f: getattr(d, f) for f in SWEEP_FIELDS if isinstance(getattr(d, f, None), list)}
    zipped = [f for f in d.zip if f in axes]
    crossed = [f for f in axes if f not in zipped]
    zip_rows = list(zip(*(axes[f] for f in zipped))) if zipped else [()]
    points = []
    for zrow in zip_rows:
        for crow in itertools.product(*(axes[f] for f in crossed)):
            points.append(dict(zip(zipped, zrow)) | dict(zip(crossed, crow)))
    return points


def member_name(point: dict) -> str:
    """Readable name of a sweep point: ``l1_0.0003-lr_0.0004``; ``single`` if none."""
    if not point:
        return "single"
    return "-".join(f"{k}_{v:g}" if isinstance(v, float) else f"{k}_{v}" for k, v in point.items())


def member_opts(spec: Spec, d, point: dict):
    """A dictionary's options at one sweep point: the point's values, its training seed
    resolved (the point's, else the dictionary's, else the spec's), its precision resolved
    (`auto`: the spec's device's, `tcspec.compute.resolve_precision`), no layers, no zip."""
    seed = point.get("seed", d.seed if d.seed is not None else spec.seed)
    precision = resolve_precision(d.precision, spec.device)
    update = {"seed": seed, "precision": precision, "layers": None, "zip": []}
    return d.model_copy(update=point | update)

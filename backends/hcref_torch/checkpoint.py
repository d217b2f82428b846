"""hcref checkpoints (:mod:`hcref.checkpoint`, one safetensors file) from and to ``hcref_torch`` modules.

The connection modules are ``HyperConnections``, ``FracConnections``, ``ManifoldHyperConnections``
and ``MHCHead``. ``modules`` is any of: a model (``nn.Module``) whose submodules include connection
modules (their module paths, e.g. ``connections.0``, become the site names), a mapping name ->
connection module, a sequence of connection modules (named ``"0"``, ``"1"``, ...), or one connection
module (``"0"``)::

    import hcref_torch.checkpoint as ckpt
    ckpt.save("hc.safetensors", model)                 # every connection module in model, by path
    ckpt.load_into(model2, "hc.safetensors")           # same names, families, n/m, d and options
    sites = ckpt.load("hc.safetensors")                # {name: new module}, built from the file

A checkpoint written here loads into ``hcref_jax`` and ``hcref_mlx`` modules (and
``hcref.checkpoint.load`` gives the reference's NumPy mappings), and the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from hcref import checkpoint as ckpt

from .mhc_modules import ManifoldHyperConnections, MHCHead, PlannedModule
from .modules import FracConnections, HyperConnections, _Connection

Modules = nn.Module | Mapping[str, nn.Module] | Sequence[nn.Module]
_CLASSES: dict[str, Any] = {
    "hc": HyperConnections,
    "fc": FracConnections,
    "mhc": ManifoldHyperConnections,
    "mhc_head": MHCHead,
}
_MODULES = (_Connection, PlannedModule)
"""The connection modules: HC/FC (``modules``) and mHC sites and head (``mhc_modules``)."""
_DTYPES = {
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}


def connections(modules: Modules) -> dict[str, Any]:
    """The connection modules of ``modules`` by site name (model paths in natural order)."""
    if isinstance(modules, _MODULES):
        return {"0": modules}
    if isinstance(modules, nn.Module):
        found = {name: m for name, m in modules.named_modules() if isinstance(m, _MODULES)}
        return dict(sorted(found.items(), key=lambda item: ckpt.natural_key(item[0])))
    items = list(modules.items()) if isinstance(modules, Mapping) else [(str(i), m) for i, m in enumerate(modules)]
    out: dict[str, Any] = {}
    for name, m in items:
        if not isinstance(m, _MODULES):
            raise TypeError(f"modules[{name!r}]: expected an hcref_torch connection module, got {type(m).__name__}")
        out[name] = m
    return out


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A parameter as a NumPy array (bfloat16 as float32, which is exact)."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()


def sites(modules: Modules) -> list[ckpt.Site]:
    """The checkpoint :class:`hcref.checkpoint.Site` of every connection module of ``modules``."""
    found = connections(modules)
    if not found:
        raise ValueError("modules: no hcref_torch connection modules found")
    return [ckpt.site_from_module(name, m, to_numpy) for name, m in found.items()]


def save(
    path: ckpt.PathLike,
    modules: Modules,
    *,
    recorder: ckpt.Recorder | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write the connection parameters of ``modules`` to ``path`` (with ``recorder``'s mean
    coefficients, see :func:`record`, and your own string ``metadata`` if given)."""
    found = sites(modules)
    ckpt.save(path, ckpt.with_stats(found, recorder) if recorder is not None else found, metadata=metadata)


def load(
    path: ckpt.PathLike, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """New connection modules built from the checkpoint at ``path`` (name -> module, stack order),
    with the file's parameters; ``dtype`` defaults to the file's (float16/32/64)."""
    return {site.name: module_from_site(site, device=device, dtype=dtype) for site in ckpt.load(path)}


def module_from_site(
    site: ckpt.Site, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Any:
    """A new connection module with ``site``'s settings and parameters (``dtype`` defaults to the site's)."""
    args, kwargs = ckpt.module_arguments(site)
    file_dtype = _DTYPES[next(iter(site.params.values())).dtype]
    module = _CLASSES[site.family](*args, **kwargs, device=device, dtype=dtype or file_dtype)
    _assign(module, site)
    return module


def load_into(modules: Modules, path: ckpt.PathLike) -> None:
    """Copy the checkpoint's parameters into the existing ``modules`` (cast to their dtype and device).

    Every connection module must have a site of the same name with the same family, n/m, d,
    dynamic-ness and options, and every site a module: else ``ValueError`` naming the mismatch.
    """
    found = connections(modules)
    for site, (name, module) in zip(ckpt.match_sites(ckpt.load(path), list(found)), found.items(), strict=True):
        ckpt.check_module_matches(site, module, name)
        _assign(module, site)


def _assign(module: Any, site: ckpt.Site) -> None:
    with torch.no_grad():
        for key, value in site.params.items():
            getattr(module, key).copy_(torch.from_numpy(np.asarray(value)))


def record(modules: Modules, run: Callable[[], Any]) -> ckpt.Recorder:
    """Run ``run()`` and record the mean coefficients of every connection module on the inputs it sees.

    Each module's ``width`` (which ``forward`` calls) is wrapped for the duration of ``run``; the
    coefficients are recomputed by the reference in float64 from the module's input H. Pass the
    result to :func:`save` (``recorder=``).
    """
    found = connections(modules)
    recorder = ckpt.Recorder(sites(found))
    tapped = {name: module for name, module in found.items() if hasattr(module, "width")}  # not the mHC head
    for name, module in tapped.items():
        module.width = _tap(recorder, name, module.width)
    try:
        with torch.no_grad():
            run()
    finally:
        for module in tapped.values():
            del module.width
    return recorder


def _tap(recorder: ckpt.Recorder, name: str, width: Callable[..., Any]) -> Callable[..., Any]:
    def tapped(H: torch.Tensor) -> Any:
        recorder.add(name, to_numpy(H))
        return width(H)

    return tapped

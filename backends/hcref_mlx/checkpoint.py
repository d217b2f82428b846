"""hcref checkpoints (:mod:`hcref.checkpoint`, one safetensors file) from and to ``hcref_mlx`` modules.

The connection modules are ``HyperConnections``, ``FracConnections``, ``ManifoldHyperConnections``
and ``MHCHead``. ``modules`` is any of: a model (``mlx.nn.Module``) whose submodules include
connection modules (their paths, e.g. ``connections.0``, become the site names), a mapping name ->
connection module, a sequence of connection modules (named ``"0"``, ``"1"``, ...), or one connection
module (``"0"``)::

    import hcref_mlx.checkpoint as ckpt
    ckpt.save("hc.safetensors", model)                 # every connection module in model, by path
    ckpt.load_into(model2, "hc.safetensors")           # same names, families, n/m, d and options
    sites = ckpt.load("hc.safetensors")                # {name: new module}, built from the file

A checkpoint written here loads into ``hcref_torch`` and ``hcref_jax`` modules (and
``hcref.checkpoint.load`` gives the reference's NumPy mappings), and the other way round.
(MLX's own ``save_weights`` writes safetensors too, but without the metadata that rebuilds the
sites; use this module for connection checkpoints.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from hcref import checkpoint as ckpt

from .mhc_modules import ManifoldHyperConnections, MHCHead, PlannedModule
from .modules import FracConnections, HyperConnections, _Connection

Modules = Any
"""An ``nn.Module`` (a model), a ``Mapping[str, nn.Module]`` or a ``Sequence[nn.Module]`` (mypy sees mlx.nn as Any)."""
_CLASSES: dict[str, Any] = {
    "hc": HyperConnections,
    "fc": FracConnections,
    "mhc": ManifoldHyperConnections,
    "mhc_head": MHCHead,
}
_MODULES = (_Connection, PlannedModule)
"""The connection modules: HC/FC (``modules``) and mHC sites and head (``mhc_modules``)."""
_DTYPES = {np.dtype(np.float16): mx.float16, np.dtype(np.float32): mx.float32, np.dtype(np.float64): mx.float64}


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
            raise TypeError(f"modules[{name!r}]: expected an hcref_mlx connection module, got {type(m).__name__}")
        out[name] = m
    return out


def to_numpy(x: mx.array) -> np.ndarray:
    """A parameter as a NumPy array (bfloat16 as float32, which is exact)."""
    if x.dtype == mx.bfloat16:
        x = x.astype(mx.float32)
    return np.array(x)


def sites(modules: Modules) -> list[ckpt.Site]:
    """The checkpoint :class:`hcref.checkpoint.Site` of every connection module of ``modules``."""
    found = connections(modules)
    if not found:
        raise ValueError("modules: no hcref_mlx connection modules found")
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


def load(path: ckpt.PathLike, *, dtype: Any = None) -> dict[str, Any]:
    """New connection modules built from the checkpoint at ``path`` (name -> module, stack order),
    with the file's parameters; ``dtype`` defaults to the file's (float16/32/64)."""
    out: dict[str, Any] = {}
    for site in ckpt.load(path):
        args, kwargs = ckpt.module_arguments(site)
        module = _CLASSES[site.family](*args, **kwargs, dtype=dtype or _DTYPES[next(iter(site.params.values())).dtype])
        _assign(module, site)
        out[site.name] = module
    return out


def load_into(modules: Modules, path: ckpt.PathLike) -> None:
    """Copy the checkpoint's parameters into the existing ``modules`` (cast to their dtype).

    Every connection module must have a site of the same name with the same family, n/m, d,
    dynamic-ness and options, and every site a module: else ``ValueError`` naming the mismatch.
    """
    found = connections(modules)
    for site, (name, module) in zip(ckpt.match_sites(ckpt.load(path), list(found)), found.items(), strict=True):
        ckpt.check_module_matches(site, module, name)
        _assign(module, site)


def _assign(module: Any, site: ckpt.Site) -> None:
    for key, value in site.params.items():
        array = np.asarray(value)
        target = module[key].dtype
        if target == mx.float64 or array.dtype == np.float64:
            # MLX converts float64 NumPy input to float32 unless asked; keep float64 where the module has it
            converted = (
                mx.array(array, dtype=mx.float64) if target == mx.float64 else mx.array(array.astype(np.float32))
            )
        else:
            converted = mx.array(array)
        module[key] = converted.astype(target)
    mx.eval(module.parameters())


def record(modules: Modules, run: Callable[[], Any]) -> ckpt.Recorder:
    """Run ``run()`` (eagerly: not under ``mx.compile``) and record the mean coefficients of every
    connection module on the inputs it sees.

    Each module's ``width`` (which ``__call__`` calls) is wrapped for the duration of ``run``; the
    coefficients are recomputed by the reference in float64 from the module's input H. Pass the
    result to :func:`save` (``recorder=``).
    """
    found = connections(modules)
    recorder = ckpt.Recorder(sites(found))
    tapped = {name: module for name, module in found.items() if hasattr(module, "width")}  # not the mHC head
    for name, module in tapped.items():
        object.__setattr__(module, "width", _tap(recorder, name, module.width))
    try:
        run()
    finally:
        for module in tapped.values():
            object.__delattr__(module, "width")
    return recorder


def _tap(recorder: ckpt.Recorder, name: str, width: Callable[..., Any]) -> Callable[..., Any]:
    def tapped(H: mx.array) -> Any:
        recorder.add(name, to_numpy(H))
        return width(H)

    return tapped

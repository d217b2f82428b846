"""hcref checkpoints (:mod:`hcref.checkpoint`, one safetensors file) from and to ``hcref_jax`` (Flax NNX) modules.

The connection modules are ``HyperConnections``, ``FracConnections``, ``ManifoldHyperConnections``
and ``MHCHead``. ``modules`` is any of: a model (``nnx.Module``) whose submodules include connection
modules (their paths, e.g. ``connections.0``, become the site names), a mapping name -> connection
module, a sequence of connection modules (named ``"0"``, ``"1"``, ...), or one connection module
(``"0"``)::

    import hcref_jax.checkpoint as ckpt
    ckpt.save("hc.safetensors", model)                 # every connection module in model, by path
    ckpt.load_into(model2, "hc.safetensors")           # same names, families, n/m, d and options
    sites = ckpt.load("hc.safetensors")                # {name: new module}, built from the file

A checkpoint written here loads into ``hcref_torch`` and ``hcref_mlx`` modules (and
``hcref.checkpoint.load`` gives the reference's NumPy mappings), and the other way round. Save
and load outside ``jax.jit`` / ``nnx.jit`` (they read and write concrete arrays).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hcref import checkpoint as ckpt

from .mhc_modules import ManifoldHyperConnections, MHCHead, PlannedModule
from .modules import FracConnections, HyperConnections, _Connection

Modules = nnx.Module | Mapping[str, nnx.Module] | Sequence[nnx.Module]
_CLASSES: dict[str, Any] = {
    "hc": HyperConnections,
    "fc": FracConnections,
    "mhc": ManifoldHyperConnections,
    "mhc_head": MHCHead,
}
_MODULES = (_Connection, PlannedModule)
"""The connection modules: HC/FC (``modules``) and mHC sites and head (``mhc_modules``)."""


def connections(modules: Modules) -> dict[str, Any]:
    """The connection modules of ``modules`` by site name (model paths in natural order)."""
    if isinstance(modules, _MODULES):
        return {"0": modules}
    if isinstance(modules, nnx.Module):
        found = {
            ".".join(str(part) for part in path): m
            for path, m in nnx.iter_modules(modules)
            if isinstance(m, _MODULES)
        }
        return dict(sorted(found.items(), key=lambda item: ckpt.natural_key(item[0])))
    items = list(modules.items()) if isinstance(modules, Mapping) else [(str(i), m) for i, m in enumerate(modules)]
    out: dict[str, Any] = {}
    for name, m in items:
        if not isinstance(m, _MODULES):
            raise TypeError(f"modules[{name!r}]: expected an hcref_jax connection module, got {type(m).__name__}")
        out[name] = m
    return out


def to_numpy(x: jax.Array) -> np.ndarray:
    """A parameter as a NumPy array (bfloat16 as float32, which is exact)."""
    x = jnp.asarray(x)
    return np.array(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x)


def sites(modules: Modules) -> list[ckpt.Site]:
    """The checkpoint :class:`hcref.checkpoint.Site` of every connection module of ``modules``."""
    found = connections(modules)
    if not found:
        raise ValueError("modules: no hcref_jax connection modules found")
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


def load(path: ckpt.PathLike, *, param_dtype: Any = None) -> dict[str, Any]:
    """New connection modules built from the checkpoint at ``path`` (name -> module, stack order),
    with the file's parameters; ``param_dtype`` defaults to the file's (float64 needs
    ``jax_enable_x64``, else JAX stores it as float32)."""
    out: dict[str, Any] = {}
    for site in ckpt.load(path):
        args, kwargs = ckpt.module_arguments(site)
        dtype = param_dtype or next(iter(site.params.values())).dtype
        module = _CLASSES[site.family](*args, **kwargs, param_dtype=dtype)
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
        param = getattr(module, key)
        param[...] = jnp.asarray(value, dtype=param[...].dtype)


def record(modules: Modules, run: Callable[[], Any]) -> ckpt.Recorder:
    """Run ``run()`` and record the mean coefficients of every connection module on the inputs it sees.

    Each module's ``width`` (which ``__call__`` calls) is wrapped for the duration of ``run`` and
    hands its input H to the host with ``jax.debug.callback``, so ``run`` may call the modules
    eagerly or through a function it jits itself (traced while the wrapper is in place: not a
    function jitted and cached before). The coefficients are recomputed by the reference in
    float64 from H. Pass the result to :func:`save` (``recorder=``).
    """
    found = connections(modules)
    recorder = ckpt.Recorder(sites(found))
    tapped = {name: module for name, module in found.items() if hasattr(module, "width")}  # not the mHC head
    for name, module in tapped.items():
        object.__setattr__(module, "width", _tap(recorder, name, module.width))
    try:
        run()
        jax.effects_barrier()  # type: ignore[no-untyped-call]
    finally:
        for module in tapped.values():
            object.__delattr__(module, "width")
    return recorder


def _tap(recorder: ckpt.Recorder, name: str, width: Callable[..., Any]) -> Callable[..., Any]:
    def tapped(H: jax.Array) -> Any:
        jax.debug.callback(lambda h: recorder.add(name, np.asarray(h, np.float64)), H)
        return width(H)

    return tapped

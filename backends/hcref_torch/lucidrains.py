"""lucidrains' ``hyper-connections`` (0.4.11) modules and state dicts <-> ``hcref_torch`` modules.

The mapping, what it refuses and the one numerical difference (lucidrains' RMSNorm has no
epsilon) are documented once, in :mod:`hcref.lucidrains`; this module moves torch tensors and
reads lucidrains' module configuration (which its state dict does not hold)::

    import hcref_torch.lucidrains as lr
    hcs = lr.from_lucidrains(lucid_model)              # {site path: hcref_torch module}
    lr.load_into_lucidrains(lucid_model, hcs)          # and back (same site paths)
    sites = lr.sites(lucid_model)                      # hcref.checkpoint sites: save once, load anywhere

Streams: lucidrains folds them into the batch, ``(batch * n, ..., d)`` with the stream index
inner; hcref keeps ``(batch, ..., n, d)``: :func:`streams_from_lucidrains` / :func:`streams_to_lucidrains`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from hcref import checkpoint as ckpt
from hcref import lucidrains as core

from .checkpoint import Modules, connections, module_from_site, to_numpy
from .checkpoint import sites as hcref_sites


def _is_lucidrains(m: nn.Module, name: str) -> bool:
    return type(m).__name__ == name and type(m).__module__.startswith("hyper_connections")


def lucidrains_sites(model: nn.Module | Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """lucidrains connection modules by site name: module paths in natural order (a lone module is ``"0"``)."""
    if isinstance(model, Mapping):
        return dict(model)
    if _is_lucidrains(model, "HyperConnections") or _is_lucidrains(model, "ManifoldConstrainedHyperConnections"):
        return {"0": model}
    found = {
        name: m
        for name, m in model.named_modules()
        if _is_lucidrains(m, "HyperConnections") or _is_lucidrains(m, "ManifoldConstrainedHyperConnections")
    }
    return dict(sorted(found.items(), key=lambda item: ckpt.natural_key(item[0])))


def _config(name: str, m: nn.Module) -> bool:
    """Checks what a lucidrains module's state dict does not show; returns its ``tanh`` flag."""
    where = f"lucidrains site {name!r}"
    if _is_lucidrains(m, "ManifoldConstrainedHyperConnections"):
        core.mhc_from_lucidrains({})
    residual_fn = getattr(m, "depth_residual_fn", None)
    if residual_fn is not None and getattr(residual_fn, "__name__", "") != "add":
        raise ValueError(f"{where}: a custom depth_residual_fn ({residual_fn!r}) does not map: hcref adds the write")
    dropout = getattr(getattr(m, "dropout", None), "p", 0.0)
    if dropout:
        warnings.warn(
            f"{where}: dropout={dropout} is not part of hcref's sites (decision D5); in eval mode the two agree",
            UserWarning,
            stacklevel=3,
        )
    return isinstance(getattr(m, "act", None), nn.Tanh)


def sites(
    model: nn.Module | Mapping[str, Any],
    *,
    tanh: bool | None = None,
    layer_indices: Mapping[str, int] | None = None,
    write: str = "refuse",
) -> list[ckpt.Site]:
    """hcref checkpoint sites from a lucidrains model (its connection modules) or a state dict.

    From modules, each site's ``tanh`` is read from the module (``tanh`` must then be None or
    agree); from a state dict it is ``tanh`` (default True, lucidrains' default). ``layer_indices``
    and ``write`` as in :func:`hcref.lucidrains.sites_from_state_dict`.
    """
    if isinstance(model, nn.Module):
        found = lucidrains_sites(model)
        flags = {name: _config(name, m) for name, m in found.items()}
        if tanh is not None and any(flag != tanh for flag in flags.values()):
            raise ValueError(f"tanh: given {tanh}, but the lucidrains modules have tanh={flags}")
        state = {f"{name}.{key}": to_numpy(value) for name, m in found.items() for key, value in m.state_dict().items()}
        return core.sites_from_state_dict(state, tanh=flags, layer_indices=layer_indices, write=write)
    state = {
        key: to_numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value) for key, value in model.items()
    }
    return core.sites_from_state_dict(
        state, tanh=True if tanh is None else tanh, layer_indices=layer_indices, write=write
    )


def from_lucidrains(
    model: nn.Module | Mapping[str, Any],
    *,
    tanh: bool | None = None,
    layer_indices: Mapping[str, int] | None = None,
    write: str = "refuse",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, nn.Module]:
    """hcref_torch connection modules (site name -> module) with the weights of a lucidrains model
    or state dict (see :func:`sites`); ``dtype`` defaults to the weights' dtype."""
    return {
        site.name: module_from_site(site, device=device, dtype=dtype)
        for site in sites(model, tanh=tanh, layer_indices=layer_indices, write=write)
    }


def to_lucidrains(
    modules: Modules, *, write: str = "refuse"
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """A lucidrains state dict (``<site name>.<lucidrains key>``, torch tensors) and each site's
    lucidrains constructor arguments, from hcref_torch connection modules."""
    state, kwargs = core.sites_to_state_dict(hcref_sites(modules), write=write)
    return {key: torch.from_numpy(np.asarray(value)) for key, value in state.items()}, kwargs


def load_into_lucidrains(
    model: nn.Module | Mapping[str, nn.Module], modules: Modules, *, write: str = "refuse"
) -> None:
    """Copy hcref_torch connection modules' weights into lucidrains modules of the same site names.

    Each pair must agree on n/m, d and ``tanh`` (``ValueError`` naming the site otherwise).
    """
    targets = lucidrains_sites(model)
    ours = connections(modules)
    names = sorted(set(targets) | set(ours), key=ckpt.natural_key)
    unmatched = [name for name in names if name not in targets or name not in ours]
    if unmatched:
        raise ValueError(
            f"site names differ: lucidrains {list(targets)}, hcref {list(ours)} (unmatched {unmatched}); "
            "pass mappings with the same names"
        )
    state, kwargs = to_lucidrains(ours, write=write)
    for name, target in targets.items():
        tanh = _config(name, target)
        if tanh != kwargs[name]["tanh"]:
            raise ValueError(
                f"site {name!r}: the lucidrains module has tanh={tanh}, the hcref site use_tanh={not tanh}"
            )
        own = target.state_dict()
        for key in core.HC_KEYS:
            value = state[f"{name}.{key}"]
            if own[key].shape != value.shape:
                raise ValueError(
                    f"site {name!r}: lucidrains {key} has shape {tuple(own[key].shape)}, the hcref site gives "
                    f"{tuple(value.shape)} (different n/m or d)"
                )
        target.load_state_dict({key: state[f"{name}.{key}"] for key in core.HC_KEYS}, strict=True)


def streams_to_lucidrains(H: torch.Tensor) -> torch.Tensor:
    """hcref streams (batch, ..., n, d) -> lucidrains' (batch * n, ..., d), stream index inner."""
    n = H.shape[-2]
    H = H.movedim(-2, 1)  # (batch, n, ..., d)
    return H.reshape((H.shape[0] * n,) + tuple(H.shape[2:]))


def streams_from_lucidrains(x: torch.Tensor, n: int) -> torch.Tensor:
    """lucidrains' (batch * n, ..., d) -> hcref streams (batch, ..., n, d)."""
    x = x.reshape((x.shape[0] // n, n) + tuple(x.shape[1:]))
    return x.movedim(1, -2)

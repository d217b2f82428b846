"""hcref adapter for lucidrains' ``hyper-connections`` (PyPI ``hyper-connections``, tested at 0.4.11):
its ``HyperConnections`` module through the suite's module-level entry, for HC (``num_fracs=1``)
and FC (one stream, ``num_fracs=m``), with the library's own initialisation (``port``), and its
``ManifoldConstrainedHyperConnections`` (mHC) the same way (``mhc_port``, below).

    python -m hcref_conformance --backend conformance/ports/lucidrains_hyper_connections.py:port
    python -m hcref_conformance --backend conformance/ports/lucidrains_hyper_connections.py:mhc_port

What the adapter does, and nothing more (read math.md 3.7 for the known FC departures):

- ``site(family, H, params, sublayer)`` builds one ``HyperConnections`` module and runs its own
  ``forward`` (width connection, the suite's sublayer as the module's ``branch``, depth
  connection) with the contract's parameters put in place of the module's by
  ``torch.func.functional_call``, so the suite's autodiff reaches the contract's keys. The
  module takes streams folded into the batch axis, ``(B * n, d)`` with the stream index inner,
  and fractions merged, ``(B, m * e)``: the adapter only reshapes (no arithmetic) between those
  and the contract's ``(..., n, d)`` / ``(..., m, e)``, with the module's own ``merge_fracs`` /
  ``split_fracs`` for FC.
- Parameters map one to one where the library has the same quantity: ``static_alpha = [A_m | A_r]``
  (HC) and ``dynamic_alpha_fn = W_alpha``, ``static_beta = B``, ``dynamic_beta_fn = W_beta``,
  ``dynamic_alpha_scale = s_alpha``, ``dynamic_beta_scale = s_beta``, ``norm.gamma = norm_weight - 1``
  (its RMSNorm scales by ``1 + gamma``). For FC the library orders the 2m alpha columns by
  fraction, read and residual interleaved (column ``2 j + t``, ``t = 0`` read, ``t = 1``
  residual), where the contract puts ``[Y | A]``: the adapter interleaves ``Y`` and ``A`` (and
  the two halves of ``W_alpha``) accordingly.
- The FC write is where the library differs in *structure*: its beta is a full (m, m) matrix per
  token, ``beta[f1, f2] = s_beta tanh(norm(H_f1) . W[:, f2]) + B[f2]``, and output fraction f2
  receives ``sum_f1 beta[f1, f2] y_f1``; the contract's write is its diagonal. The adapter sets
  every column of ``dynamic_beta_fn`` to ``W_beta``, so the diagonal *is* the contract's beta, and
  leaves the off-diagonal terms exactly as the library computes them (they are not zeroed and
  not embedded as a diagonal): the suite then sees the all-to-all write.
- ``init_hc`` / ``init_fc`` read the contract's parameters off a freshly built module (the
  library's own initialisation), with the same mapping; the FC write's (e, m) projection must
  then have equal columns (it is zero at init).
- The ends: ``expand`` / ``reduce`` are the library's own ``get_expand_reduce_stream_functions``;
  ``frac_split`` / ``frac_merge`` reshape (the library keeps the fractions merged between sites).
  The library validates no input, so the adapter checks the ends' arguments with
  :mod:`hcref.validation` (the error contract rows say nothing about the library).

Declared (:class:`hcref.interface.Support`): HC and FC through ``site()``, the ends as ops, the
library's own initialisers, norm ``rmsnorm`` with epsilon 0 (its RMSNorm is
``x / max(|x|_2, 1e-12) * sqrt(d) * (1 + gamma)``: no epsilon; the clamp is not declared), only
``use_tanh`` can be turned off (its ``tanh=False``), dynamic coefficients only, no mixed precision
(float32 parameters on a bfloat16 state raise a dtype error in its matmuls).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from hcref_torch import backend as _torch
from hyper_connections.hyper_connections import HyperConnections, get_expand_reduce_stream_functions
from hyper_connections.manifold_constrained_hyper_connections import ManifoldConstrainedHyperConnections
from torch import nn

from hcref import validation
from hcref.interface import END_OPS, Support

LIBRARY = "hyper-connections"


def _meta(x: torch.Tensor) -> validation.ArrayMeta:
    return validation.ArrayMeta(tuple(x.shape), str(x.dtype).removeprefix("torch."), x.is_floating_point())


class _Branch(nn.Module):
    """The suite's sublayer as the module's ``branch``: the library hands it ``(B, d)``."""

    def __init__(self, sublayer: Callable[[Any], Any], lead: tuple[int, ...]) -> None:
        super().__init__()
        self.sublayer, self.lead = sublayer, lead

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.sublayer(h.reshape(self.lead + h.shape[-1:]))
        return y.reshape(h.shape[:1] + y.shape[-1:])


def _interleave(read: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Columns ``[r_0, s_0, r_1, s_1, ...]`` of two (rows, m) blocks: the library's FC alpha layout."""
    return torch.stack([read, residual], dim=-1).reshape(read.shape[0], -1)


class LucidrainsPort:
    """lucidrains' ``HyperConnections`` (HC and FC) as an hcref port (module docstring)."""

    name = LIBRARY
    version = importlib.metadata.version(LIBRARY)
    framework_version = f"torch {torch.__version__}"

    def supports(self) -> Support:
        return Support(
            families=("hc", "fc"), ops=END_OPS, sites=("hc", "fc"), initialisers=("hc", "fc"),
            norms=("rmsnorm",), norm_eps={"rmsnorm": 0.0}, switches=("use_tanh",), modes=("dynamic",),
            mixed_precision=False,
            notes={"norm": "RMSNorm x / max(|x|_2, 1e-12) * sqrt(d) * (1 + gamma): no epsilon, a clamp at 1e-12",
                   "fc": "FC is HyperConnections(1, dim=d, num_fracs=m); its write beta is (m, m) per token"},
        )

    # --- arrays and gradients: those of hcref_torch ------------------------------------------

    def capabilities(self) -> list[tuple[str, str]]:
        return _torch.capabilities()

    def asarray(self, x: np.ndarray, dtype: str, device: str = "cpu") -> torch.Tensor:
        return _torch.asarray(x, dtype, device)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return _torch.to_numpy(x)

    def dtype_name(self, x: torch.Tensor) -> str:
        return _torch.dtype_name(x)

    def vjp(self, fn: Callable[..., Any], primals: Sequence[Any], cotangents: Sequence[Any]) -> tuple[Any, ...]:
        return _torch.vjp(fn, primals, cotangents)

    # --- the ends ---------------------------------------------------------------------------

    def expand(self, x: torch.Tensor, n: int) -> torch.Tensor:
        validation.check_expand(_meta(x), n)
        expand, _ = get_expand_reduce_stream_functions(n)
        d = x.shape[-1]
        return expand(x.reshape(-1, d)).reshape(x.shape[:-1] + (n, d))

    def reduce(self, H: torch.Tensor) -> torch.Tensor:
        validation.check_reduce(_meta(H))
        n, d = H.shape[-2:]
        _, reduce = get_expand_reduce_stream_functions(n)
        return reduce(H.reshape(-1, d)).reshape(H.shape[:-2] + (d,))

    def frac_split(self, x: torch.Tensor, m: int) -> torch.Tensor:
        validation.check_frac_split(_meta(x), m)
        return x.reshape(x.shape[:-1] + (m, x.shape[-1] // m))

    def frac_merge(self, H: torch.Tensor) -> torch.Tensor:
        validation.check_frac_merge(_meta(H))
        return H.reshape(H.shape[:-2] + (H.shape[-2] * H.shape[-1],))

    # --- the module-level entry ---------------------------------------------------------------

    def site(self, family: str, H: torch.Tensor, params: Mapping[str, torch.Tensor],
             sublayer: Callable[[Any], Any], *, norm: str = "rmsnorm", use_tanh: bool = True,
             use_norm: bool = True, use_scale: bool = True) -> torch.Tensor:
        if norm != "rmsnorm" or not use_norm or not use_scale:
            raise NotImplementedError(f"{LIBRARY} has only its RMSNorm and always scales (norm={norm!r}, "
                                      f"use_norm={use_norm}, use_scale={use_scale})")
        lead, (k, w) = H.shape[:-2], H.shape[-2:]
        p = dict(params)
        gamma = p["norm_weight"] - 1
        common = {"dynamic_alpha_scale": p["s_alpha"], "static_beta": p["B"], "dynamic_beta_scale": p["s_beta"],
                  "norm.gamma": gamma}
        if family == "hc":
            module = HyperConnections(k, dim=w, layer_index=0, tanh=use_tanh, branch=_Branch(sublayer, lead))
            tensors = {**common, "static_alpha": torch.cat([p["A_m"][:, None], p["A_r"]], dim=1),
                       "dynamic_alpha_fn": p["W_alpha"], "dynamic_beta_fn": p["W_beta"]}
            out = torch.func.functional_call(module, tensors, (H.reshape(-1, w),))
            return out.reshape(H.shape)
        module = HyperConnections(1, dim=k * w, num_fracs=k, layer_index=0, tanh=use_tanh,
                                  branch=_Branch(sublayer, lead))
        W = p["W_alpha"]
        # num_fracs = 1 keeps the HC layout of the write projection, (e,); else it is (e, m)
        W_beta = p["W_beta"] if k == 1 else p["W_beta"][:, None].expand(w, k)
        tensors = {**common, "static_alpha": _interleave(p["Y"], p["A"]),
                   "dynamic_alpha_fn": _interleave(W[:, :k], W[:, k:]), "dynamic_beta_fn": W_beta}
        merged = module.merge_fracs(H.reshape((-1, k, w)))
        out = torch.func.functional_call(module, tensors, (merged,))
        return module.split_fracs(out).reshape(H.shape)

    # --- the library's own initialisation --------------------------------------------------------

    def init_hc(self, n: int, d: int, layer_index: int, *, dynamic: bool = True,
                norm: str = "rmsnorm") -> dict[str, np.ndarray]:
        _check_declared(dynamic, norm)
        m = dict(HyperConnections(n, dim=d, layer_index=layer_index).named_parameters())
        alpha = _np(m["static_alpha"])
        return {"A_m": alpha[:, 0], "A_r": alpha[:, 1:], **_dynamic(m, _np(m["dynamic_alpha_fn"]),
                                                                      _np(m["dynamic_beta_fn"]))}

    def init_fc(self, m: int, d: int, *, dynamic: bool = True, norm: str = "rmsnorm") -> dict[str, np.ndarray]:
        _check_declared(dynamic, norm)
        p = dict(HyperConnections(1, dim=d, num_fracs=m).named_parameters())
        alpha, W = _np(p["static_alpha"]), _np(p["dynamic_alpha_fn"])
        W_beta = _np(p["dynamic_beta_fn"]).reshape(d // m, -1)
        if not np.all(W_beta == W_beta[:, :1]):
            raise ValueError(f"{LIBRARY}: dynamic_beta_fn has unequal columns; the contract has one W_beta")
        return {"Y": alpha[:, 0::2], "A": alpha[:, 1::2],
                **_dynamic(p, np.concatenate([W[:, 0::2], W[:, 1::2]], axis=1), W_beta[:, 0])}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy().copy()


def _dynamic(m: Mapping[str, torch.Tensor], W_alpha: np.ndarray, W_beta: np.ndarray) -> dict[str, np.ndarray]:
    return {"B": _np(m["static_beta"]), "W_alpha": W_alpha, "W_beta": W_beta,
            "s_alpha": _np(m["dynamic_alpha_scale"]), "s_beta": _np(m["dynamic_beta_scale"]),
            "norm_weight": _np(m["norm.gamma"]) + 1}


def _check_declared(dynamic: bool, norm: str) -> None:
    if not dynamic or norm != "rmsnorm":
        raise NotImplementedError(f"{LIBRARY} is dynamic with its RMSNorm only (dynamic={dynamic}, norm={norm!r})")


port = LucidrainsPort()
"""The port the suite loads (``--backend conformance/ports/lucidrains_hyper_connections.py:port``)."""


class LucidrainsMhcPort(LucidrainsPort):
    """lucidrains' ``ManifoldConstrainedHyperConnections`` (mHC) as an hcref port.

    What the adapter does:

    - ``site("mhc", H, {"b": b}, sublayer, iters=..., eps=0)`` builds one module
      (``ManifoldConstrainedHyperConnections(n, dim=d, sinkhorn_iters=iters)``, the suite's sublayer
      as its ``branch``) and runs its own ``forward`` with the contract's logits swapped in by
      ``torch.func.functional_call``: ``static_alpha = [b_pre | mat(b_res)^T]`` (the library's
      alpha is (input stream, output) where the contract's ``h_res`` is (output, input)),
      ``static_beta = b_post``, and its projections ``dynamic_alpha_fn``, ``dynamic_beta_fn`` zero.
      It reshapes only between ``(..., n, d)`` and the library's ``(B * n, d)``.
    - Static only: the library's projection is per stream (stream i's own RMS-normed d values
      times one (d, 1 + n) matrix shared by all streams; its RMSNorm has no epsilon and a weight
      ``1 + gamma``), where the paper's ``phi`` sees the whole flattened n*d token; no contract
      ``phi`` maps onto it, so dynamic coefficients are not declared (at init, where its
      projections are zero, dynamic is the static function of the same logits).
    - ``init_mhc`` reads ``b`` off a fresh module (the library's own init: ``b_pre = e_(layer mod
      n)``, ``b_post = 1``, ``b_res = I``, decision D10's ``lucidrains`` preset).
    - Only the paper's variant (no V4 ``eps``); ``expand``/``reduce`` are the library's; no
      ``mhc_head`` (the library reduces by the sum).
    - No float64: the module computes its coefficients, Sinkhorn and mixes in float32 (``.float()``)
      whatever the input dtype, so float64 is not declared (it would report float32 rounding).
    """

    def capabilities(self) -> list[tuple[str, str]]:
        return [(device, dtype) for device, dtype in _torch.capabilities() if dtype != "float64"]

    def supports(self) -> Support:
        return Support(
            families=("mhc",), ops=("expand", "reduce"), sites=("mhc",), initialisers=("mhc",), modes=("static",),
            mhc_variants=("paper",), mixed_precision=False,
            notes={"mhc": "ManifoldConstrainedHyperConnections(n, dim=d); its dynamic projection is per stream "
                          "(RMSNorm without epsilon over each stream's d values, one (d, 1 + n) matrix for all "
                          "streams), which no contract phi maps onto: static (its logits) only"})

    def site(self, family: str, H: torch.Tensor, params: Mapping[str, torch.Tensor],  # type: ignore[override]
             sublayer: Callable[[Any], Any], *, iters: int = 20, eps: float = 0.0) -> torch.Tensor:
        if family != "mhc" or eps != 0 or set(params) != {"b"}:
            raise NotImplementedError(f"{LIBRARY}'s mHC adapter runs static paper-mHC sites only (family={family!r}, "
                                      f"eps={eps}, params {sorted(params)})")
        lead, (n, d) = H.shape[:-2], H.shape[-2:]
        b = params["b"]
        b_res = b[2 * n:].reshape(n, n)
        module = ManifoldConstrainedHyperConnections(n, dim=d, layer_index=0, sinkhorn_iters=iters,
                                                     branch=_Branch(sublayer, lead))
        zeros = {name: torch.zeros_like(t) for name, t in module.named_parameters() if name.startswith("dynamic_")}
        tensors = {**zeros, "static_alpha": torch.cat([b[:n, None], b_res.T], dim=1), "static_beta": b[n:2 * n]}
        out = torch.func.functional_call(module, tensors, (H.reshape(-1, d),))
        return out.reshape(H.shape)

    def init_mhc(self, n: int, d: int, layer_index: int, *, dynamic: bool = False) -> dict[str, np.ndarray]:
        if dynamic:
            raise NotImplementedError(f"{LIBRARY}'s mHC adapter declares static sites only")
        p = dict(ManifoldConstrainedHyperConnections(n, dim=d, layer_index=layer_index).named_parameters())
        alpha = _np(p["static_alpha"])
        return {"b": np.concatenate([alpha[:, 0], _np(p["static_beta"]), alpha[:, 1:].T.reshape(-1)])}


mhc_port = LucidrainsMhcPort()
"""lucidrains' mHC (``--backend conformance/ports/lucidrains_hyper_connections.py:mhc_port``)."""

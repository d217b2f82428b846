"""Converters between hcref's parameter mappings and lucidrains' ``hyper-connections`` (0.4.11) state dicts.

NumPy only (the torch glue, which reads and builds lucidrains' modules, is
``hcref_torch.lucidrains``). One lucidrains site (``HyperConnections(num_residual_streams, dim=...)``)
has these state-dict entries; with ``num_fracs = 1`` (HC) they map one to one:

| lucidrains | hcref HC | how |
|---|---|---|
| ``static_alpha`` (n, n+1) | ``A_m`` (n), ``A_r`` (n, n) | column 0, columns 1.. (HC paper Alg. 2's packing) |
| ``static_beta`` (n) | ``B`` (n) | as is |
| ``dynamic_alpha_fn`` (d, n+1) | ``W_alpha`` (d, n+1) | as is |
| ``dynamic_beta_fn`` (d) | ``W_beta`` (d) | as is |
| ``dynamic_alpha_scale`` () | ``s_alpha`` () | as is |
| ``dynamic_beta_scale`` () | ``s_beta`` () | as is |
| ``norm.gamma`` (d) | ``norm_weight`` (d) | ``norm_weight = gamma + 1``, with ``norm="rmsnorm"`` |
| constructor ``tanh`` | option ``use_tanh`` | not in the state dict: pass it (default True) |
| constructor ``layer_index`` | ``layer_index`` | not in the state dict; it only sets the init |

The layer index places the initial read ``A_m = e_(k mod n)`` in both (lucidrains picks a random
stream when it is not given); converted sites take their position in the stack unless told.

The one numerical difference: lucidrains' RMSNorm is ``F.normalize(x) * sqrt(d) * (gamma + 1)``,
i.e. ``x / max(||x||, 1e-12) * sqrt(d)``, with no epsilon inside the root, while hcref's
``rmsnorm`` has ``eps = 1e-6`` (decision D1): ``x / sqrt(mean(x^2) + 1e-6)``. Per stream the
normalised rows differ by the factor ``(1 + 1e-6 / mean(x^2))^(-1/2)``, a relative
``5e-7 / mean(x^2)``; the coefficients and outputs differ by about that much times the dynamic
terms (measured in ``tests/test_convert_lucidrains.py``). Everything else is the same function
(HC paper Eqs. 10-13 with tanh and the two scales, checked there against lucidrains' own module).

What does not map, and is refused with a ``ValueError`` that says so: hcref sites with
``norm="layernorm"`` or ``"none"``, ``use_norm=False`` or ``use_scale=False`` (lucidrains always
applies its RMSNorm and both scales); lucidrains sites with ``num_input_views > 1`` (several branch
inputs), ``add_branch_out_to_residual=False`` (no write), ``num_streams > 1`` together with
``num_fracs > 1`` (a hybrid hcref does not define), a learned stream embedding (``StreamEmbed``:
hcref's expand has none), or a custom ``depth_residual_fn`` (checked by the torch glue on modules).

Frac-Connections. lucidrains' ``num_fracs = m`` (with one stream) departs from the FC paper (math.md
3.7, decision D6), and only part of it maps:

- read and mix map exactly: lucidrains stores ``[Y | A]`` with the columns interleaved per target
  fraction, column ``2k`` = ``Y[:, k]``, column ``2k+1`` = ``A[:, k]`` (the same for
  ``dynamic_alpha_fn``'s columns), and its per-fraction RMSNorm over e = d/m with ``gamma + 1``
  is hcref's ``rmsnorm`` of width e (up to the epsilon above). The width step (branch input and
  mixed fractions) then agrees with lucidrains'.
- the write does not: lucidrains writes ``H_out[f2] += sum_f1 beta[f1, f2] y[f1]`` with
  ``beta[f1, f2] = s_beta tanh(H_bar[f1] W[:, f2]) + B[f2]`` (all to all; ``dynamic_beta_fn``
  is (e, m)), where the paper writes fraction j of y to fraction j only, ``beta_j = s_beta
  tanh(H_bar[j] W_beta) + B[j]``. The paper's write is lucidrains' diagonal, when all columns of
  ``dynamic_beta_fn`` are equal. So ``write="refuse"`` (default) raises; ``write="diagonal"``
  keeps the diagonal (``B``, and ``W_beta`` = the common column; unequal columns are refused) and
  warns that the off-diagonal terms ``sum_{f1 != f2} beta[f1, f2] y[f1]`` are dropped
  (lucidrains -> hcref) or will be added by lucidrains (hcref -> lucidrains): the outputs differ.
- lucidrains' FC init reads fraction 0 into every branch-input fraction (``Y[0, :] = 1``); that is a
  parameter value and converts as it is.

mHC: :func:`mhc_from_lucidrains` / :func:`mhc_to_lucidrains` are the hook and raise
``NotImplementedError``: lucidrains' ``ManifoldConstrainedHyperConnections`` is not the function
of hcref's mHC (``hcref.mhc_coeffs``, keys ``phi``, ``b``, ``gates``, decision D9) for any weights
(math.md 4.6): it computes each stream's coefficients from that stream's own d-wide RMSNorm with
a gain (hcref: one weightless RMS over the flattened n*d vector, so a stream's logits depend on the
other streams' scale), and its Sinkhorn normalises in the opposite order (columns exact, hcref's
rows). Only parts map (its ``static_alpha`` is ``[b_pre | b_res^T]``, its three scales are hcref's
``gates``); a converter would have to choose what to give up, so none is offered.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import validation as v
from ._arrays import Array
from .checkpoint import Site, natural_key

HC_KEYS = (
    "static_alpha",
    "static_beta",
    "dynamic_alpha_fn",
    "dynamic_beta_fn",
    "dynamic_alpha_scale",
    "dynamic_beta_scale",
    "norm.gamma",
)
"""The state-dict keys of one lucidrains ``HyperConnections`` site (HC and its ``num_fracs`` FC)."""

MHC_KEYS = ("pre_branch_scale", "residual_scale", "h_post_scale")
"""Keys only lucidrains' mHC modules have (used to recognise them)."""

WRITE_MODES = ("refuse", "diagonal")
_RMS_OPTIONS = {"norm": "rmsnorm", "use_norm": True, "use_scale": True}


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _site_state(state: Mapping[str, Any], where: str) -> dict[str, Array]:
    if not isinstance(state, Mapping):
        raise TypeError(
            f"{where}: expected a mapping of lucidrains state-dict key to array, got {type(state).__name__}"
        )
    present = set(state)
    if present & set(MHC_KEYS):
        mhc_from_lucidrains(state)
    missing = [key for key in HC_KEYS if key not in present]
    if missing == ["static_beta", "dynamic_beta_fn", "dynamic_beta_scale"]:
        raise ValueError(
            f"{where}: no write parameters (lucidrains add_branch_out_to_residual=False): hcref always writes "
            "the branch output to the streams, so this site does not map"
        )
    extra = sorted(present - set(HC_KEYS))
    if missing or extra:
        raise ValueError(f"{where}: expected lucidrains keys {list(HC_KEYS)}; missing {missing}, extra {extra}")
    out = {}
    for key in HC_KEYS:
        array = np.asarray(state[key])
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{where}: state[{key!r}]: expected a floating-point array, got dtype {array.dtype}")
        out[key] = array
    return out


def _check_shape(where: str, state: Mapping[str, Array], key: str, shape: tuple[int, ...], why: str = "") -> None:
    if state[key].shape != shape:
        raise ValueError(
            f"{where}: state[{key!r}]: expected shape {_fmt(shape)}{why}, got shape {_fmt(state[key].shape)}"
        )


def _geometry(state: Mapping[str, Array], where: str) -> tuple[int, int, int]:
    """(streams s, fractions f, width w of the norm) of a lucidrains site, refusing what hcref lacks."""
    sa = state["static_alpha"]
    if sa.ndim != 2:
        raise ValueError(f"{where}: state['static_alpha']: expected 2 axes, got shape {_fmt(sa.shape)}")
    w = state["norm.gamma"].shape[0] if state["norm.gamma"].ndim == 1 else -1
    dbf = state["dynamic_beta_fn"]
    f = 1 if dbf.ndim == 1 else dbf.shape[-1]
    rows = sa.shape[0]
    if f < 1 or rows % f:
        raise ValueError(f"{where}: state['static_alpha'] has {rows} rows, not a multiple of num_fracs={f}")
    s = rows // f
    if s > 1 and f > 1:
        raise ValueError(
            f"{where}: lucidrains site with num_residual_streams={s} and num_fracs={f}: hcref has HC (fractions 1) "
            "and FC (streams 1) but no hybrid of the two, so this site does not map"
        )
    views = sa.shape[1] - rows
    if views != f:
        raise ValueError(
            f"{where}: state['static_alpha'] has {sa.shape[1]} columns, i.e. num_input_views={views // max(f, 1)}: "
            "hcref sites have one branch input, so this site does not map"
        )
    return s, f, w


def _gamma_to_weight(gamma: Array) -> Array:
    return gamma + np.ones((), gamma.dtype)


def _weight_to_gamma(weight: Array) -> Array:
    # exact (Sterbenz) for weights in [0.5, 2]; then gamma + 1 gives the weight back bit for bit
    return weight - np.ones((), weight.dtype)


def _check_write(write: str) -> None:
    if write not in WRITE_MODES:
        raise ValueError(f"write: expected one of {WRITE_MODES}, got {write!r}")


# --- HC ---------------------------------------------------------------------------------------


def hc_from_lucidrains(
    state: Mapping[str, Any], *, tanh: bool = True, dynamic: bool = True
) -> tuple[dict[str, Array], dict[str, Any]]:
    """hcref HC parameters and options from one lucidrains HC site's state dict (table above).

    ``tanh``: the lucidrains module's constructor argument (not stored in its state dict).
    ``dynamic=False`` returns static parameters; it requires lucidrains' dynamic projections to be
    exactly zero (then lucidrains' coefficients are the static ones). Returns ``(params, options)``
    with ``options = {"norm": "rmsnorm", "use_tanh": tanh, "use_norm": True, "use_scale": True}``.
    """
    v.check_flag("tanh", tanh)
    v.check_flag("dynamic", dynamic)
    where = "lucidrains HC site"
    state = _site_state(state, where)
    s, f, w = _geometry(state, where)
    if f > 1:
        raise ValueError(f"{where}: num_fracs={f}: this is lucidrains' Frac-Connections; use fc_from_lucidrains")
    n, d = s, w
    _check_shape(where, state, "static_alpha", (n, n + 1))
    _check_shape(where, state, "static_beta", (n,))
    _check_shape(where, state, "dynamic_alpha_fn", (d, n + 1), " (d from norm.gamma)")
    _check_shape(where, state, "dynamic_beta_fn", (d,))
    _check_shape(where, state, "dynamic_alpha_scale", ())
    _check_shape(where, state, "dynamic_beta_scale", ())
    sa = state["static_alpha"]
    params = {"A_m": sa[:, 0].copy(), "A_r": sa[:, 1:].copy(), "B": state["static_beta"].copy()}
    options = {**_RMS_OPTIONS, "use_tanh": tanh}
    if not dynamic:
        for key in ("dynamic_alpha_fn", "dynamic_beta_fn"):
            if np.any(state[key] != 0):
                raise ValueError(f"{where}: dynamic=False needs state[{key!r}] == 0 (static coefficients); it is not")
        return params, options
    params.update(
        {
            "W_alpha": state["dynamic_alpha_fn"].copy(),
            "W_beta": state["dynamic_beta_fn"].copy(),
            "s_alpha": state["dynamic_alpha_scale"].copy(),
            "s_beta": state["dynamic_beta_scale"].copy(),
            "norm_weight": _gamma_to_weight(state["norm.gamma"]),
        }
    )
    return params, options


def _check_rms_options(where: str, dynamic: bool, norm: str, use_norm: bool, use_scale: bool) -> None:
    v.check_options(norm, True, use_norm, use_scale)
    if not dynamic:
        return
    if norm != "rmsnorm":
        raise ValueError(
            f"{where}: norm={norm!r} does not map: lucidrains normalises with its RMSNorm (gain gamma + 1, no "
            "epsilon); only norm='rmsnorm' converts"
        )
    if not use_norm or not use_scale:
        off = "use_norm" if not use_norm else "use_scale"
        raise ValueError(f"{where}: {off}=False does not map: lucidrains always applies its norm and both scales")


def hc_to_lucidrains(
    params: Mapping[str, Any],
    *,
    d: int | None = None,
    norm: str = "rmsnorm",
    use_tanh: bool = True,
    use_norm: bool = True,
    use_scale: bool = True,
) -> tuple[dict[str, Array], dict[str, Any]]:
    """One lucidrains HC site's state dict from hcref HC parameters (the inverse of :func:`hc_from_lucidrains`).

    Returns ``(state, kwargs)``: ``kwargs`` are the lucidrains constructor arguments the state
    needs (``num_residual_streams``, ``dim``, ``tanh``). A static site becomes a lucidrains site
    with zero dynamic projections (``d`` must then be given; gamma 0, scales 0.01 as lucidrains'
    init). Refuses (``ValueError``) options lucidrains cannot express (module docstring).
    """
    where = "hcref HC site"
    site = Site(
        "hc",
        "hc",
        dict(params),
        d=d or 0,
        options={"norm": norm, "use_tanh": use_tanh, "use_norm": use_norm, "use_scale": use_scale},
    )
    _check_rms_options(where, site.dynamic, norm, use_norm, use_scale)
    p, n, width = site.params, site.rate, site.d
    dtype = p["A_r"].dtype
    state = {
        "static_alpha": np.concatenate([p["A_m"][:, None], p["A_r"]], axis=1),
        "static_beta": p["B"].copy(),
    }
    if site.dynamic:
        state.update(
            {
                "dynamic_alpha_fn": p["W_alpha"].copy(),
                "dynamic_beta_fn": p["W_beta"].copy(),
                "dynamic_alpha_scale": p["s_alpha"].copy(),
                "dynamic_beta_scale": p["s_beta"].copy(),
                "norm.gamma": _weight_to_gamma(p["norm_weight"]),
            }
        )
    else:
        state.update(_static_dynamic_part(width, n + 1, (width,), dtype))
    kwargs = {"num_residual_streams": n, "dim": width, "tanh": use_tanh}
    return {key: state[key] for key in HC_KEYS}, kwargs


def _static_dynamic_part(w: int, cols: int, beta_shape: tuple[int, ...], dtype: Any) -> dict[str, Array]:
    return {
        "dynamic_alpha_fn": np.zeros((w, cols), dtype),
        "dynamic_beta_fn": np.zeros(beta_shape, dtype),
        "dynamic_alpha_scale": np.asarray(0.01, dtype),
        "dynamic_beta_scale": np.asarray(0.01, dtype),
        "norm.gamma": np.zeros((w,), dtype),
    }


# --- FC ---------------------------------------------------------------------------------------


def _interleave(Y: Array, A: Array) -> Array:
    """``[Y | A]`` (k, 2m) -> lucidrains' column order: column 2j = Y[:, j], column 2j+1 = A[:, j]."""
    out = np.empty(Y.shape[:-1] + (2 * Y.shape[-1],), np.result_type(Y, A))
    out[..., 0::2], out[..., 1::2] = Y, A
    return out


def _write_warning(direction: str) -> None:
    warnings.warn(
        f"{direction}: the FC write does not map: lucidrains writes every branch-output fraction to every "
        "state fraction (beta[f1, f2], all to all), the FC paper (and hcref) fraction j to fraction j only; "
        "write='diagonal' keeps the diagonal, so the outputs of the two differ by the off-diagonal terms",
        UserWarning,
        stacklevel=3,
    )


def fc_from_lucidrains(
    state: Mapping[str, Any], *, tanh: bool = True, write: str = "refuse"
) -> tuple[dict[str, Array], dict[str, Any]]:
    """hcref FC parameters and options from one lucidrains ``num_fracs = m`` site (one stream).

    Read, mix and norm map exactly (module docstring); the write only with ``write="diagonal"``
    (with a warning), else ``ValueError``. Returns ``(params, options)`` with ``norm="rmsnorm"``.
    """
    v.check_flag("tanh", tanh)
    _check_write(write)
    where = "lucidrains FC site"
    state = _site_state(state, where)
    _s, m, e = _geometry(state, where)
    if m == 1:
        raise ValueError(f"{where}: num_fracs=1: this is lucidrains' Hyper-Connections; use hc_from_lucidrains")
    _check_shape(where, state, "static_alpha", (m, 2 * m))
    _check_shape(where, state, "static_beta", (m,))
    _check_shape(where, state, "dynamic_alpha_fn", (e, 2 * m), " (e from norm.gamma)")
    _check_shape(where, state, "dynamic_beta_fn", (e, m))
    _check_shape(where, state, "dynamic_alpha_scale", ())
    _check_shape(where, state, "dynamic_beta_scale", ())
    if write == "refuse":
        raise ValueError(
            f"{where}: the FC write does not map: lucidrains writes all to all (beta[f1, f2] = s_beta "
            "tanh(H_bar[f1] W[:, f2]) + B[f2]), the FC paper diagonally (fraction j to fraction j); pass "
            "write='diagonal' to keep the diagonal and drop the rest (the outputs then differ)"
        )
    dbf = state["dynamic_beta_fn"]
    if np.any(dbf != dbf[:, :1]):
        raise ValueError(
            f"{where}: state['dynamic_beta_fn'] has unequal columns: lucidrains' write projection differs per "
            "target fraction, the FC paper's W_beta is one vector, so not even the diagonal maps"
        )
    _write_warning("lucidrains -> hcref")
    sa, daf = state["static_alpha"], state["dynamic_alpha_fn"]
    params = {
        "Y": sa[:, 0::2].copy(),
        "A": sa[:, 1::2].copy(),
        "B": state["static_beta"].copy(),
        "W_alpha": np.concatenate([daf[:, 0::2], daf[:, 1::2]], axis=1),
        "W_beta": dbf[:, 0].copy(),
        "s_alpha": state["dynamic_alpha_scale"].copy(),
        "s_beta": state["dynamic_beta_scale"].copy(),
        "norm_weight": _gamma_to_weight(state["norm.gamma"]),
    }
    return params, {**_RMS_OPTIONS, "use_tanh": tanh}


def fc_to_lucidrains(
    params: Mapping[str, Any],
    *,
    d: int | None = None,
    norm: str = "rmsnorm",
    use_tanh: bool = True,
    use_norm: bool = True,
    use_scale: bool = True,
    write: str = "refuse",
) -> tuple[dict[str, Array], dict[str, Any]]:
    """One lucidrains ``num_fracs = m`` site's state dict from hcref FC parameters (inverse of
    :func:`fc_from_lucidrains`); the write only with ``write="diagonal"`` (warns: lucidrains will add
    the off-diagonal terms). Returns ``(state, kwargs)`` with ``num_residual_streams=1``,
    ``num_fracs=m``, ``dim=d``, ``tanh``."""
    _check_write(write)
    where = "hcref FC site"
    site = Site(
        "fc",
        "fc",
        dict(params),
        d=d or 0,
        options={"norm": norm, "use_tanh": use_tanh, "use_norm": use_norm, "use_scale": use_scale},
    )
    _check_rms_options(where, site.dynamic, norm, use_norm, use_scale)
    if write == "refuse":
        raise ValueError(
            f"{where}: the FC write does not map: lucidrains' num_fracs write is all to all (every fraction of the "
            "branch output to every state fraction), the FC paper's diagonal; pass write='diagonal' to convert "
            "anyway (lucidrains will then add the off-diagonal terms)"
        )
    _write_warning("hcref -> lucidrains")
    p, m = site.params, site.rate
    e = site.d // m
    dtype = p["A"].dtype
    state = {"static_alpha": _interleave(p["Y"], p["A"]), "static_beta": p["B"].copy()}
    if site.dynamic:
        W_alpha = p["W_alpha"]
        state.update(
            {
                "dynamic_alpha_fn": _interleave(W_alpha[:, :m], W_alpha[:, m:]),
                "dynamic_beta_fn": np.repeat(p["W_beta"][:, None], m, axis=1),
                "dynamic_alpha_scale": p["s_alpha"].copy(),
                "dynamic_beta_scale": p["s_beta"].copy(),
                "norm.gamma": _weight_to_gamma(p["norm_weight"]),
            }
        )
    else:
        state.update(_static_dynamic_part(e, 2 * m, (e, m), dtype))
    kwargs = {"num_residual_streams": 1, "dim": site.d, "num_fracs": m, "tanh": use_tanh}
    return {key: state[key] for key in HC_KEYS}, kwargs


# --- mHC (hook) -------------------------------------------------------------------------------


def mhc_from_lucidrains(state: Mapping[str, Any], **options: Any) -> tuple[dict[str, Array], dict[str, Any]]:
    """Hook for lucidrains' ``ManifoldConstrainedHyperConnections`` -> hcref mHC: raises ``NotImplementedError``.

    What does not map (module docstring, math.md 4.6): lucidrains' per-stream d-wide RMSNorm with a
    gain against hcref's weightless RMS of the flattened n*d vector (D9), and its Sinkhorn order
    (columns exact) against the paper's (rows exact, D7). What would: ``static_alpha`` (n, 1+n) is
    ``[b_pre | b_res^T]`` (lucidrains' residual block is ``(in, out)``, hcref's ``b_res`` row-major
    ``(out, in)``), ``static_beta`` is ``b_post``, ``pre_branch_scale``, ``h_post_scale`` and
    ``residual_scale`` are ``gates`` (pre, post, res), and ``dynamic_alpha_fn`` (d, 1+n) /
    ``dynamic_beta_fn`` (d) embed block-diagonally in ``phi`` (n*d, 2n+n^2).
    """
    raise NotImplementedError(
        "lucidrains mHC -> hcref mHC is not offered: lucidrains normalises each stream on its own and runs "
        "Sinkhorn in the opposite order, so no hcref mHC (decision D9) computes its function; see "
        "hcref.lucidrains.mhc_from_lucidrains for what would and would not map"
    )


def mhc_to_lucidrains(params: Mapping[str, Any], **options: Any) -> tuple[dict[str, Array], dict[str, Any]]:
    """Hook for hcref mHC -> lucidrains: raises ``NotImplementedError`` (see :func:`mhc_from_lucidrains`)."""
    raise NotImplementedError(
        "hcref mHC -> lucidrains mHC is not offered: lucidrains' mHC computes a different function "
        "(per-stream norm, opposite Sinkhorn order); see hcref.lucidrains.mhc_from_lucidrains"
    )


# --- whole state dicts ------------------------------------------------------------------------


def split_state_dict(state_dict: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Group a lucidrains model's state dict by connection site: ``{site prefix: {key: array}}``.

    A site is any prefix with a ``static_alpha`` entry (``layers.0.hc.static_alpha`` -> site
    ``layers.0.hc``); entries outside sites (the model's own weights) are ignored, except a
    lucidrains ``stream_embed``, which is refused (hcref's expand has no learned embedding).
    Sites are returned in natural order of their prefixes.
    """
    prefixes = sorted(
        (key[: -len("static_alpha")].rstrip(".") for key in state_dict if key.rsplit(".", 1)[-1] == "static_alpha"),
        key=natural_key,
    )
    embeds = [key for key in state_dict if key.rsplit(".", 1)[-1] == "stream_embed"]
    if embeds:
        raise ValueError(
            f"state_dict: lucidrains stream embeddings {embeds}: hcref's expand copies the input to every stream "
            "and has no learned per-stream embedding, so they do not map"
        )
    sites: dict[str, dict[str, Any]] = {}
    for prefix in prefixes:
        head = f"{prefix}." if prefix else ""
        sites[prefix or "0"] = {
            key[len(head) :]: value
            for key, value in state_dict.items()
            if key.startswith(head) and (key[len(head) :] in HC_KEYS or key[len(head) :] in MHC_KEYS)
        }
    return sites


def sites_from_state_dict(
    state_dict: Mapping[str, Any],
    *,
    tanh: bool | Mapping[str, bool] = True,
    layer_indices: Mapping[str, int] | None = None,
    write: str = "refuse",
) -> list[Site]:
    """hcref checkpoint sites from a lucidrains model's state dict (NumPy arrays), in natural order.

    Each lucidrains site becomes an HC site (``num_fracs = 1``) or an FC site (``num_fracs > 1``,
    only with ``write="diagonal"``). ``tanh``: one flag for all sites or one per site prefix.
    ``layer_indices``: per site prefix; by default a site's position in the stack (0, 1, ...), as a
    lucidrains factory numbering sublayers would give. The layer index only sets the init, it does
    not change the function.
    """
    sites = []
    for i, (name, state) in enumerate(split_state_dict(state_dict).items()):
        use_tanh = tanh[name] if isinstance(tanh, Mapping) else tanh
        dbf = np.asarray(state.get("dynamic_beta_fn", np.zeros(1)))
        if dbf.ndim == 2:
            params, options = fc_from_lucidrains(state, tanh=use_tanh, write=write)
            sites.append(Site(name, "fc", params, options=options))
        else:
            params, options = hc_from_lucidrains(state, tanh=use_tanh)
            layer_index = layer_indices[name] if layer_indices is not None else i
            sites.append(Site(name, "hc", params, layer_index=layer_index, options=options))
    return sites


def sites_to_state_dict(
    sites: list[Site], *, write: str = "refuse"
) -> tuple[dict[str, Array], dict[str, dict[str, Any]]]:
    """A lucidrains state dict (``<site name>.<lucidrains key>``) and each site's constructor
    arguments, from hcref checkpoint sites (HC, and FC with ``write="diagonal"``)."""
    state: dict[str, Array] = {}
    kwargs: dict[str, dict[str, Any]] = {}
    for site in sites:
        if site.family == "hc":
            site_state, site_kwargs = hc_to_lucidrains(site.params, d=site.d, **site.options)
            site_kwargs["layer_index"] = site.layer_index
        elif site.family == "fc":
            site_state, site_kwargs = fc_to_lucidrains(site.params, d=site.d, write=write, **site.options)
        else:
            site_state, site_kwargs = mhc_to_lucidrains(site.params, **site.options)
        state.update({f"{site.name}.{key}": value for key, value in site_state.items()})
        kwargs[site.name] = site_kwargs
    return state, kwargs

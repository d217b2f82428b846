"""hcref checkpoints: the connection parameters of a stack of sites, as one safetensors file.

One format for every framework (the glue lives in ``hcref_torch.checkpoint``,
``hcref_jax.checkpoint`` and ``hcref_mlx.checkpoint``); this module is NumPy only and imports
``safetensors`` only when a file is read or written (``pip install "hcref[checkpoint]"``).

Format (``format_version`` 1)
-----------------------------
Tensors, one per parameter, named ``<site name>.<contract key>``::

    connections.0.A_m      (n,)          HC:  A_m, A_r, B [+ W_alpha, W_beta, s_alpha, s_beta, norm_weight, norm_bias]
    connections.0.A_r      (n, n)        FC:  Y, A, B [+ the same dynamic keys at width e = d/m]
    connections.1.Y        (m, m)        mHC: b [+ phi, gates]        (decision D9)
    ...                                  mHC head: phi, b, gate

A site name is any non-empty string (a module path such as ``connections.0``; dots allowed,
the contract keys have none). Optionally, per site, the mean coefficients recorded on sample
inputs (:class:`Recorder`), named ``<site name>.<stat key>``: ``mean_alpha`` (HC (n, n+1), FC
(m, 2m)) and ``mean_beta`` (n or m); mHC ``mean_h_pre`` (n), ``mean_h_post`` (n), ``mean_h_res``
(n, n). Tensors keep their dtype (float16/32/64; bfloat16 parameters are written as float32,
which is exact).

Metadata (safetensors' string-to-string header), all required unless marked::

    format          "hcref-checkpoint"
    format_version  "1"
    hcref_version   the writing hcref's version (informative)
    sites           JSON list, in stack order, one object per site:
                    {"name": "connections.0", "family": "hc", "n": 4, "d": 64, "layer_index": 0,
                     "dynamic": true, "options": {"norm": "layernorm", "use_tanh": true,
                     "use_norm": true, "use_scale": true}, "stats_tokens": 0}
                    FC writes "m" instead of "n" and "layer_index": null; mHC's options are
                    {"iters": 20, "eps": 0.0}, the mHC head's {"eps": 0.0}. "stats_tokens" is the
                    number of tokens behind the recorded means (0: none recorded).
    user            (optional) JSON object of the writer's own string entries

The file holds exactly the tensors the metadata implies: a missing or extra tensor, a shape that
does not follow from (family, n/m, d, dynamic, norm), a non-floating dtype, an unknown family or
option, or a malformed header is a ``ValueError`` that names the file, the site and the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import validation as v
from ._arrays import Array
from .connections import FAMILIES
from .sinkhorn_knopp import ITERS

FORMAT = "hcref-checkpoint"
FORMAT_VERSION = 1

STAT_KEYS = {
    "hc": ("mean_alpha", "mean_beta"),
    "fc": ("mean_alpha", "mean_beta"),
    "mhc": ("mean_h_pre", "mean_h_post", "mean_h_res"),
    "mhc_head": (),
}
_RATE_NAME = {"hc": "n", "fc": "m", "mhc": "n", "mhc_head": "n"}
_HC_OPTIONS: dict[str, Any] = {"norm": "layernorm", "use_tanh": True, "use_norm": True, "use_scale": True}
_MHC_OPTIONS: dict[str, Any] = {"iters": ITERS, "eps": 0.0}
PathLike = str | os.PathLike[str]


def _safetensors_numpy() -> Any:
    try:
        import safetensors.numpy as stn
    except ImportError as err:
        raise ImportError(
            "hcref checkpoints are safetensors files and need the 'safetensors' package: "
            'pip install "hcref[checkpoint]" (or pip install safetensors)'
        ) from err
    return stn


def default_options(family: str) -> dict[str, Any]:
    """The options a site of ``family`` has when none are given (the papers' defaults)."""
    if family in ("hc", "fc"):
        return dict(_HC_OPTIONS)
    if family == "mhc":
        return dict(_MHC_OPTIONS)
    return {"eps": 0.0}


def param_shapes(
    family: str, rate: int, d: int, *, dynamic: bool, options: Mapping[str, Any]
) -> dict[str, tuple[int, ...]]:
    """Every parameter key of a site and its shape (``rate`` is n for HC/mHC, m for FC)."""
    if family == "hc":
        return v.expected_param_shapes("hc", rate, d, dynamic=dynamic, norm=options["norm"])
    if family == "fc":
        return v.expected_param_shapes("fc", rate, d // rate, dynamic=dynamic, norm=options["norm"])
    if family == "mhc":
        return v.mhc_param_shapes(rate, d, dynamic=dynamic)
    return v.mhc_head_param_shapes(rate, d)


def stat_shapes(family: str, rate: int) -> dict[str, tuple[int, ...]]:
    """Shape of every recorded-mean key of a site (see the module docstring)."""
    if family == "hc":
        return {"mean_alpha": (rate, rate + 1), "mean_beta": (rate,)}
    if family == "fc":
        return {"mean_alpha": (rate, 2 * rate), "mean_beta": (rate,)}
    if family == "mhc":
        return {"mean_h_pre": (rate,), "mean_h_post": (rate,), "mean_h_res": (rate, rate)}
    return {}


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_options(where: str, family: str, options: Mapping[str, Any]) -> dict[str, Any]:
    full = default_options(family)
    unknown = sorted(set(options) - set(full))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown} for family {family!r}; expected {sorted(full)}")
    full.update(options)
    if family in ("hc", "fc"):
        try:
            v.check_options(full["norm"], full["use_tanh"], full["use_norm"], full["use_scale"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: options: {err}") from None
    else:
        try:
            if family == "mhc":
                v.check_iters(full["iters"])
            full["eps"] = v.check_eps(full["eps"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: options: {err}") from None
    return full


def _infer_rate(family: str, params: Mapping[str, Array], where: str) -> int:
    key = {"hc": "A_m", "fc": "B", "mhc": "b", "mhc_head": "b"}[family]
    if key not in params:
        raise ValueError(f"{where}: params: missing key {key!r} (it gives the site's {_RATE_NAME[family]})")
    shape = np.shape(params[key])
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(f"{where}: params[{key!r}]: expected a non-empty 1-d array, got shape {_fmt(shape)}")
    if family != "mhc":
        return int(shape[0])
    n = round(math.sqrt(shape[0] + 1)) - 1  # len(b) = 2n + n^2 = (n+1)^2 - 1
    if n < 1 or 2 * n + n * n != shape[0]:
        raise ValueError(f"{where}: params['b']: expected length 2n+n^2 for some n >= 1, got {shape[0]}")
    return n


def _infer_d(family: str, rate: int, params: Mapping[str, Array]) -> int | None:
    if family in ("hc", "fc") and "W_alpha" in params:
        w = int(np.shape(params["W_alpha"])[0])
        return w if family == "hc" else w * rate
    if family in ("mhc", "mhc_head") and "phi" in params:
        rows = int(np.shape(params["phi"])[0])
        return rows // rate if rows % rate == 0 else None
    return None


def _is_dynamic(family: str, params: Mapping[str, Any]) -> bool:
    if family in ("hc", "fc"):
        return v.is_dynamic(params)
    return family == "mhc_head" or any(key in params for key in v.MHC_DYNAMIC_KEYS)


def _as_array(value: Any) -> Any:
    """NumPy scalars (what 0-d arithmetic returns) as 0-d arrays; anything else as it is."""
    return np.asarray(value) if isinstance(value, np.generic) else value


def _check_arrays(where: str, arrays: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    missing = [key for key in expected if key not in arrays]
    extra = sorted(key for key in arrays if key not in expected)
    if missing or extra:
        raise ValueError(f"{where}: {what}: expected keys {sorted(expected)}; missing {missing}, extra {extra}")
    for key, shape in expected.items():
        array = arrays[key]
        if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
            got = f"dtype {array.dtype}" if isinstance(array, np.ndarray) else type(array).__name__
            raise ValueError(f"{where}: {what}[{key!r}]: expected a floating-point numpy array, got {got}")
        if array.shape != shape:
            raise ValueError(f"{where}: {what}[{key!r}]: expected shape {_fmt(shape)}, got shape {_fmt(array.shape)}")


@dataclass
class Site:
    """One residual site of a checkpoint: its parameters under the contract's keys and what is
    needed to rebuild its module.

    ``family`` is ``"hc"``, ``"fc"``, ``"mhc"`` or ``"mhc_head"``; ``rate`` is n (HC, mHC) or m
    (FC), ``d`` the model width, ``layer_index`` the 0-based sublayer index the site was
    initialised with (HC and mHC; ``None`` for FC), ``options`` the coefficient options (HC/FC:
    ``norm``, ``use_tanh``, ``use_norm``, ``use_scale``; mHC: ``iters``, ``eps``), ``stats`` the
    recorded mean coefficients (``STAT_KEYS``) over ``stats_tokens`` tokens. ``rate`` and ``d``
    are inferred from ``params`` when not given (``d`` must be given for a static site).
    Construction checks every key and shape and raises ``ValueError`` naming what is wrong.
    """

    name: str
    family: str
    params: dict[str, Array]
    rate: int = 0
    d: int = 0
    layer_index: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Array] = field(default_factory=dict)
    stats_tokens: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"site name: expected a non-empty string, got {self.name!r}")
        where = f"site {self.name!r}"
        if self.family not in FAMILIES:
            raise ValueError(f"{where}: family: expected one of {FAMILIES}, got {self.family!r}")
        if not isinstance(self.params, Mapping):
            raise ValueError(
                f"{where}: params: expected a mapping of contract key to array, got {type(self.params).__name__}"
            )
        self.params = {key: _as_array(value) for key, value in self.params.items()}
        rate = _infer_rate(self.family, self.params, where)
        if self.rate and self.rate != rate:
            raise ValueError(f"{where}: {_RATE_NAME[self.family]}: given {self.rate}, but the parameters have {rate}")
        self.rate = rate
        d = _infer_d(self.family, rate, self.params)
        if not self.d:
            if d is None:
                raise ValueError(f"{where}: d: a static site's parameters do not determine d; pass d=")
            self.d = d
        v.check_count("d", self.d)
        if self.family == "fc" and self.d % rate:
            raise ValueError(f"{where}: d: expected a multiple of m={rate} (d = m * e), got {self.d}")
        if self.layer_index is not None:
            v.check_count("layer_index", self.layer_index, minimum=0)
        self.options = _check_options(where, self.family, self.options)
        expected = param_shapes(self.family, rate, self.d, dynamic=self.dynamic, options=self.options)
        _check_arrays(where, self.params, expected, "params")
        self.params = {key: self.params[key] for key in expected}
        self.stats = {key: _as_array(value) for key, value in self.stats.items()}
        if self.stats:
            _check_arrays(where, self.stats, stat_shapes(self.family, rate), "stats")
        v.check_count("stats_tokens", self.stats_tokens, minimum=0)

    @property
    def dynamic(self) -> bool:
        """Whether the site has dynamic (input-dependent) coefficients."""
        return _is_dynamic(self.family, self.params)

    def header(self) -> dict[str, Any]:
        """The site's entry in the file's ``sites`` metadata."""
        return {
            "name": self.name,
            "family": self.family,
            _RATE_NAME[self.family]: self.rate,
            "d": self.d,
            "layer_index": self.layer_index,
            "dynamic": self.dynamic,
            "options": self.options,
            "stats_tokens": self.stats_tokens,
        }


def _file_array(array: Any) -> Array:
    array = np.asarray(array)
    if array.dtype.kind == "V" or str(array.dtype) == "bfloat16":  # ml_dtypes' bfloat16 (jax): exact in float32
        array = array.astype(np.float32)
    return np.array(array, order="C", copy=True)


def save(path: PathLike, sites: Iterable[Site], *, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``sites`` (in stack order) to ``path`` as an hcref checkpoint (format in the module docstring).

    ``metadata``: optional string entries of your own, stored under ``user``. Raises ``ValueError``
    for duplicate site names; the sites themselves were checked when built.
    """
    from . import __version__

    sites = list(sites)
    names = [site.name for site in sites]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"sites: every site needs its own name; duplicated {duplicates}")
    tensors: dict[str, Array] = {}
    for site in sites:
        for key, value in {**site.params, **site.stats}.items():
            tensors[f"{site.name}.{key}"] = _file_array(value)
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "hcref_version": __version__,
        "sites": json.dumps([site.header() for site in sites]),
    }
    if metadata:
        if not all(isinstance(k, str) and isinstance(x, str) for k, x in metadata.items()):
            raise ValueError("metadata: expected a mapping of str to str")
        header["user"] = json.dumps(dict(metadata))
    _safetensors_numpy().save_file(tensors, os.fspath(path), metadata=header)


def _read(path: PathLike) -> tuple[dict[str, str], dict[str, Array]]:
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="np") as f:
        header = f.metadata() or {}
        return dict(header), {key: f.get_tensor(key) for key in f.keys()}


def _int(where: str, entry: Mapping[str, Any], key: str, *, optional: bool = False) -> int | None:
    value = entry.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {key!r}: expected an int, got {value!r}")
    return value


def load(path: PathLike) -> list[Site]:
    """Read an hcref checkpoint: its sites in stack order, every key, shape and dtype checked.

    Raises ``ValueError`` naming the file and what is wrong (not a safetensors file, not an
    hcref checkpoint, an unsupported format version, a missing/extra tensor or wrong shape).
    """
    _safetensors_numpy()
    where = f"checkpoint {os.fspath(path)!r}"
    if not os.path.isfile(path):
        raise ValueError(f"{where}: no such file")
    try:
        header, tensors = _read(path)
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise ValueError(f"{where}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{where}: metadata 'format': expected {FORMAT!r}, got {header.get('format')!r}")
    if header.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(
            f"{where}: metadata 'format_version': this hcref reads version {FORMAT_VERSION}, "
            f"got {header.get('format_version')!r}"
        )
    try:
        entries = json.loads(header.get("sites", ""))
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: metadata 'sites': not valid JSON ({err})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{where}: metadata 'sites': expected a JSON list of objects")
    by_site: dict[str, dict[str, Array]] = {}
    for key, array in tensors.items():
        name, sep, leaf = key.rpartition(".")
        if not sep or not name:
            raise ValueError(f"{where}: tensor {key!r}: expected a name '<site>.<key>'")
        by_site.setdefault(name, {})[leaf] = array
    sites: list[Site] = []
    for i, entry in enumerate(entries):
        name = entry.get("name")
        site_where = f"{where}: site {i} ({name!r})"
        family = entry.get("family")
        if family not in FAMILIES:
            raise ValueError(f"{site_where}: family: expected one of {FAMILIES}, got {family!r}")
        arrays = by_site.pop(str(name), {})
        stat_keys = STAT_KEYS[family]
        stats = {key: arrays.pop(key) for key in stat_keys if key in arrays}
        options = entry.get("options", {})
        if not isinstance(options, dict):
            raise ValueError(f"{site_where}: options: expected a JSON object, got {options!r}")
        rate = _int(site_where, entry, _RATE_NAME[family])
        d = _int(site_where, entry, "d")
        try:
            site = Site(
                name=str(name),
                family=family,
                params=arrays,
                rate=rate or 0,
                d=d or 0,
                layer_index=_int(site_where, entry, "layer_index", optional=True),
                options=options,
                stats=stats,
                stats_tokens=_int(site_where, entry, "stats_tokens", optional=True) or 0,
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None
        if site.dynamic != entry.get("dynamic"):
            raise ValueError(
                f"{site_where}: metadata says dynamic={entry.get('dynamic')!r}, the tensors say {site.dynamic}"
            )
        if stats and not site.stats_tokens:
            raise ValueError(f"{site_where}: recorded means present but stats_tokens is 0")
        sites.append(site)
    if by_site:
        raise ValueError(f"{where}: tensors of sites the metadata does not list: {sorted(by_site)}")
    return sites


def user_metadata(path: PathLike) -> dict[str, str]:
    """The writer's own entries (``save(..., metadata=)``) of the checkpoint at ``path`` ({} if none)."""
    _safetensors_numpy()
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="np") as f:
        header = f.metadata() or {}
    user = json.loads(header.get("user", "{}"))
    return {str(k): str(x) for k, x in user.items()}


# --- building blocks for the framework glue (duck-typed on the backends' module attributes) ---


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders ``connections.2`` before ``connections.10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[.]", name))


def site_from_module(name: str, module: Any, to_numpy: Callable[[Any], Array]) -> Site:
    """The :class:`Site` of one connection module of any backend.

    Reads the module's :class:`hcref.connections.Plan` (``module.plan``: the mHC modules, and any
    module built on a plan) or else the attributes the HC/FC modules carry (``family``, ``n``/``m``,
    ``d``, ``layer_index``, the options), and ``module.params()``, converting each array with ``to_numpy``.
    """
    plan = getattr(module, "plan", None)
    if plan is not None and getattr(plan, "family", None) in FAMILIES:
        family, rate, d, layer_index, options = plan.family, plan.rows, plan.d, plan.layer_index, plan.kwargs
    else:
        family = getattr(module, "family", None)
        if family not in FAMILIES:
            raise TypeError(f"module {name!r}: expected an hcref connection module, got {type(module).__name__}")
        options = {key: getattr(module, key) for key in default_options(family)}
        rate, d, layer_index = getattr(module, _RATE_NAME[family]), module.d, getattr(module, "layer_index", None)
    params = {key: to_numpy(value) for key, value in module.params().items()}
    return Site(name=name, family=family, params=params, rate=rate, d=d, layer_index=layer_index, options=options)


def module_arguments(site: Site) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments that rebuild ``site``'s module in any backend:
    ``HyperConnections(n, d, layer_index, dynamic=..., **options)``,
    ``FracConnections(m, d, dynamic=..., **options)``,
    ``ManifoldHyperConnections(n, d, layer_index, dynamic=..., iters=..., eps=...)`` or ``MHCHead(n, d, eps=...)``.
    A missing ``layer_index`` is 0 (it only places the initial values, which the file's replace)."""
    layer_index = site.layer_index if site.layer_index is not None else 0
    if site.family in ("hc", "mhc"):
        return (site.rate, site.d, layer_index), {"dynamic": site.dynamic, **site.options}
    if site.family == "fc":
        return (site.rate, site.d), {"dynamic": site.dynamic, **site.options}
    return (site.rate, site.d), dict(site.options)


def check_module_matches(site: Site, module: Any, module_name: str) -> None:
    """``ValueError`` unless ``module`` has the family, size, options and dynamic-ness of ``site``."""
    expected = site_from_module(module_name, module, lambda a: np.zeros(tuple(a.shape), np.float32))
    for key in ("family", "rate", "d", "dynamic", "options"):
        got, want = getattr(expected, key), getattr(site, key)
        if got != want:
            label = _RATE_NAME[site.family] if key == "rate" else key
            raise ValueError(
                f"module {module_name!r}: {label} is {got!r} but checkpoint site {site.name!r} has {want!r}; "
                "build the module with the checkpoint's settings (or use load(), which does)"
            )


def match_sites(sites: list[Site], names: list[str]) -> list[Site]:
    """The checkpoint's sites in the order of ``names``: ``ValueError`` naming missing or extra names."""
    by_name = {site.name: site for site in sites}
    missing = [name for name in names if name not in by_name]
    extra = [site.name for site in sites if site.name not in set(names)]
    if missing or extra:
        raise ValueError(
            f"checkpoint sites {sorted(by_name, key=natural_key)} do not match the modules "
            f"{names}: not in the checkpoint {missing}, not among the modules {extra}"
        )
    return [by_name[name] for name in names]


# --- recorded mean coefficients ------------------------------------------------------------------


class Recorder:
    """Accumulates the mean dynamic coefficients of each site over sample inputs.

    ``add(name, H)`` computes the site's coefficients on the site's input ``H`` (HC (..., n, d),
    FC (..., m, e), mHC (..., n, d); anything ``numpy.asarray`` reads) with the reference in
    float64 and adds them to a running sum over tokens; ``sites()`` returns the sites with
    ``stats`` set to the means. For a static site the mean is the static matrix.
    """

    def __init__(self, sites: Iterable[Site]) -> None:
        self._sites = {site.name: site for site in sites}
        self._sums: dict[str, dict[str, Array]] = {}
        self._tokens: dict[str, int] = {}

    def add(self, name: str, H: Any) -> None:
        if name not in self._sites:
            raise ValueError(f"name: expected one of the recorder's sites {sorted(self._sites)}, got {name!r}")
        site = self._sites[name]
        H = np.asarray(H, dtype=np.float64)
        params = {key: np.asarray(value, dtype=np.float64) for key, value in site.params.items()}
        coeffs = _coefficients(site, H, params)
        tokens = int(np.prod(H.shape[:-2]))
        sums = self._sums.setdefault(name, {key: np.zeros(c.shape[len(H.shape) - 2 :]) for key, c in coeffs.items()})
        for key, c in coeffs.items():
            sums[key] += c.reshape((tokens,) + sums[key].shape).sum(axis=0)
        self._tokens[name] = self._tokens.get(name, 0) + tokens

    def sites(self) -> list[Site]:
        """The sites, those with samples carrying their mean coefficients (float64)."""
        out = []
        for name, site in self._sites.items():
            tokens = self._tokens.get(name, 0)
            stats = {key: s / tokens for key, s in self._sums[name].items()} if tokens else {}
            out.append(
                Site(
                    site.name,
                    site.family,
                    site.params,
                    site.rate,
                    site.d,
                    site.layer_index,
                    site.options,
                    stats,
                    tokens,
                )
            )
        return out


def with_stats(sites: Iterable[Site], recorder: Recorder) -> list[Site]:
    """``sites`` with the means ``recorder`` holds for them (sites it did not see keep theirs)."""
    recorded = {site.name: site for site in recorder.sites()}
    out = []
    for site in sites:
        rec = recorded.get(site.name)
        if rec is not None and rec.stats_tokens:
            site = dataclasses.replace(site, stats=rec.stats, stats_tokens=rec.stats_tokens)
        out.append(site)
    return out


def _coefficients(site: Site, H: Array, params: dict[str, Array]) -> dict[str, Array]:
    import hcref

    if site.family in ("hc", "fc"):
        coeffs = hcref.hc_coeffs if site.family == "hc" else hcref.fc_coeffs
        alpha, beta = coeffs(H, params, **site.options)
        return {"mean_alpha": alpha, "mean_beta": beta}
    if site.family == "mhc":
        h_pre, h_post, h_res = hcref.mhc_coeffs(H, params, **site.options)
        return {"mean_h_pre": h_pre, "mean_h_post": h_post, "mean_h_res": h_res}
    raise ValueError(f"site {site.name!r}: the mHC head is a learned reduce, it has no coefficients to record")

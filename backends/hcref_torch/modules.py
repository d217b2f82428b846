"""Drop-in ``torch.nn`` modules for Hyper-Connections and Frac-Connections.

Named dims: ``...`` any leading (token) axes, ``n`` streams, ``m`` fractions, ``d`` model width,
``e = d/m`` fraction width. One connection module per residual site (sublayer)::

    H = Expand(n)(x)                      # (..., d) -> (..., n, d)
    for k, block in enumerate(blocks):    # hc = HyperConnections(n, d, layer_index=k)
        H = hcs[k](H, block)              # or: h0, state = hcs[k].width(H); H = hcs[k].depth(block(h0), state)
    x = Reduce()(H)                       # (..., n, d) -> (..., d), before the final norm

Parameters are registered under the contract's keys (``A_m``, ``A_r``, ``B``, ``W_alpha``, ...),
so ``state_dict()`` is the checkpoint format of hcref, and start at ``hcref.init_hc`` /
``hcref.init_fc``. Precision (D12): a float32 module on a bfloat16/float16 stream computes float32
coefficients and keeps the stream (``h0``, ``H_out``) in the stream's dtype, so a half-precision
sublayer sees half-precision inputs. ``device="meta"`` builds the module without memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

import hcref

from . import ops


class SiteState(NamedTuple):
    """What ``depth`` needs from ``width``: the mixed residual streams and the write weights."""

    H_res: torch.Tensor
    """(..., n, d) for HC, (..., m, e) for FC."""
    beta: torch.Tensor
    """(..., n) for HC, (..., m) for FC."""


class _Connection(nn.Module):
    family = ""

    def __init__(
        self,
        init: dict[str, Any],
        *,
        norm: str,
        use_tanh: bool,
        use_norm: bool,
        use_scale: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        hcref.validation.check_options(norm, use_tanh, use_norm, use_scale)
        self.norm, self.use_tanh, self.use_norm, self.use_scale = norm, use_tanh, use_norm, use_scale
        dtype = dtype or torch.get_default_dtype()
        self.keys = tuple(init)
        for key, value in init.items():
            self.register_parameter(key, nn.Parameter(torch.tensor(value, dtype=dtype, device=device)))

    def params(self) -> dict[str, torch.Tensor]:
        """The parameters as the contract's flat mapping (for the functional ops)."""
        return {key: getattr(self, key) for key in self.keys}

    def _options(self) -> dict[str, Any]:
        return {"norm": self.norm, "use_tanh": self.use_tanh, "use_norm": self.use_norm, "use_scale": self.use_scale}

    def width(self, H: torch.Tensor) -> tuple[torch.Tensor, SiteState]:
        raise NotImplementedError

    def depth(self, y: torch.Tensor, state: SiteState) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, H: torch.Tensor, branch: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        """One whole site: ``depth(branch(h0, *args, **kwargs), state)`` with ``h0, state = width(H)``."""
        h0, state = self.width(H)
        return self.depth(branch(h0, *args, **kwargs), state)

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, use_tanh={self.use_tanh}, use_norm={self.use_norm}, use_scale={self.use_scale}"


class HyperConnections(_Connection):
    """One HC residual site (see :func:`hcref.hc_coeffs`, :func:`hcref.hc_width`, :func:`hcref.hc_depth`).

    ``width``: H (..., n, d) -> h0 (..., d), state (H_res (..., n, d), beta (..., n));
    ``depth``: y (..., d), state -> H_out (..., n, d); ``forward(H, branch)`` does both around ``branch``.
    ``layer_index`` counts attention and MLP sublayers separately, from 0.
    """

    family = "hc"

    def __init__(
        self,
        n: int,
        d: int,
        layer_index: int,
        *,
        dynamic: bool = True,
        norm: str = "layernorm",
        use_tanh: bool = True,
        use_norm: bool = True,
        use_scale: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        init = hcref.init_hc(n, d, layer_index, dynamic=dynamic, norm=norm)
        super().__init__(
            init, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale, device=device, dtype=dtype
        )
        self.n, self.d, self.layer_index, self.dynamic = n, d, layer_index, dynamic

    def width(self, H: torch.Tensor) -> tuple[torch.Tensor, SiteState]:
        alpha, beta = ops.hc_coeffs(H, self.params(), **self._options())
        h0, H_res = ops.hc_width(H, alpha)
        return h0, SiteState(H_res, beta)

    def depth(self, y: torch.Tensor, state: SiteState) -> torch.Tensor:
        return ops.hc_depth(y, state.H_res, state.beta)

    def extra_repr(self) -> str:
        head = f"n={self.n}, d={self.d}, layer_index={self.layer_index}, dynamic={self.dynamic}"
        return f"{head}, {super().extra_repr()}"


class FracConnections(_Connection):
    """One FC residual site (see :func:`hcref.fc_coeffs`, :func:`hcref.fc_width`, :func:`hcref.fc_depth`).

    ``width``: H (..., m, e) -> h0 (..., d), state (H_res (..., m, e), beta (..., m));
    ``depth``: y (..., d), state -> H_out (..., m, e); ``forward(H, branch)`` does both around ``branch``.
    """

    family = "fc"

    def __init__(
        self,
        m: int,
        d: int,
        *,
        dynamic: bool = True,
        norm: str = "layernorm",
        use_tanh: bool = True,
        use_norm: bool = True,
        use_scale: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        init = hcref.init_fc(m, d, dynamic=dynamic, norm=norm)
        super().__init__(
            init, norm=norm, use_tanh=use_tanh, use_norm=use_norm, use_scale=use_scale, device=device, dtype=dtype
        )
        self.m, self.d, self.dynamic = m, d, dynamic

    def width(self, H: torch.Tensor) -> tuple[torch.Tensor, SiteState]:
        alpha, beta = ops.fc_coeffs(H, self.params(), **self._options())
        h0, H_res = ops.fc_width(H, alpha)
        return h0, SiteState(H_res, beta)

    def depth(self, y: torch.Tensor, state: SiteState) -> torch.Tensor:
        return ops.fc_depth(y, state.H_res, state.beta)

    def extra_repr(self) -> str:
        return f"m={self.m}, d={self.d}, dynamic={self.dynamic}, " + super().extra_repr()


class Expand(nn.Module):
    """x (..., d) -> H (..., n, d): n copies of the embedding (:func:`hcref.expand`)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        hcref.validation.check_count("n", n)
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.expand(x, self.n)

    def extra_repr(self) -> str:
        return f"n={self.n}"


class Reduce(nn.Module):
    """H (..., n, d) -> x (..., d): sum of the streams (:func:`hcref.reduce`)."""

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        return ops.reduce(H)


class FracSplit(nn.Module):
    """x (..., d) -> H (..., m, e): contiguous fractions (:func:`hcref.frac_split`)."""

    def __init__(self, m: int) -> None:
        super().__init__()
        hcref.validation.check_count("m", m)
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.frac_split(x, self.m)

    def extra_repr(self) -> str:
        return f"m={self.m}"


class FracMerge(nn.Module):
    """H (..., m, e) -> x (..., d = m*e): concatenated fractions (:func:`hcref.frac_merge`)."""

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        return ops.frac_merge(H)

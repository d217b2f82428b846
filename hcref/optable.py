"""The op table: every op of the public contract, once.

The numpy backend, the conformance suite and the project's tests are all driven by this
table; a backend implements every ``name`` under the same name. ``<name>_vjp`` in the
reference takes ``(*inputs, *cotangents, **options)`` and returns one cotangent per entry of
``differentiable``, in that order (a parameter mapping's cotangent is a mapping with the
same keys). The mHC ops are in :data:`MHC_OPS` until every first-party backend has them;
:data:`ALL_OPS` holds both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpSpec:
    """One op of the contract.

    ``inputs``: positional arguments in order; ``differentiable``: the inputs that get a
    cotangent (arrays, or the ``params`` mapping); ``outputs``: names of the results in order
    (a single output is returned bare, several as a tuple); ``options``: keyword-only options;
    ``family``: ``ends``, ``hc``, ``fc`` or ``mhc``.
    """

    name: str
    family: str
    inputs: tuple[str, ...]
    differentiable: tuple[str, ...]
    outputs: tuple[str, ...]
    options: tuple[str, ...] = ()

    @property
    def vjp_name(self) -> str:
        return self.name + "_vjp"


COEFF_OPTIONS = ("norm", "use_tanh", "use_norm", "use_scale")

OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("expand", "ends", ("x", "n"), ("x",), ("H",)),
        OpSpec("reduce", "ends", ("H",), ("H",), ("x",)),
        OpSpec("frac_split", "ends", ("x", "m"), ("x",), ("H",)),
        OpSpec("frac_merge", "ends", ("H",), ("H",), ("x",)),
        OpSpec("hc_coeffs", "hc", ("H", "params"), ("H", "params"), ("alpha", "beta"), COEFF_OPTIONS),
        OpSpec("hc_width", "hc", ("H", "alpha"), ("H", "alpha"), ("h0", "H_res")),
        OpSpec("hc_depth", "hc", ("y", "H_res", "beta"), ("y", "H_res", "beta"), ("H_out",)),
        OpSpec("fc_coeffs", "fc", ("H", "params"), ("H", "params"), ("alpha", "beta"), COEFF_OPTIONS),
        OpSpec("fc_width", "fc", ("H", "alpha"), ("H", "alpha"), ("h0", "H_res")),
        OpSpec("fc_depth", "fc", ("y", "H_res", "beta"), ("y", "H_res", "beta"), ("H_out",)),
    )
}
"""Every op of the contract that every first-party backend implements, by name: the table the
conformance suite and the backend tests iterate."""

MHC_OPTIONS = ("iters", "eps")

MHC_OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("sinkhorn", "mhc", ("Z",), ("Z",), ("P",), MHC_OPTIONS),
        OpSpec("mhc_coeffs", "mhc", ("H", "params"), ("H", "params"), ("h_pre", "h_post", "h_res"), MHC_OPTIONS),
        OpSpec("mhc_pre", "mhc", ("H", "h_pre"), ("H", "h_pre"), ("h0",)),
        OpSpec("mhc_post", "mhc", ("y", "H", "h_post", "h_res"), ("y", "H", "h_post", "h_res"), ("H_out",)),
        OpSpec("mhc_head", "mhc", ("H", "params"), ("H", "params"), ("x",), ("eps",)),
    )
}
"""The mHC ops of the contract (decisions D7-D10), in the reference and the numpy backend.
This table joins :data:`OPS` once every first-party backend implements it."""

ALL_OPS: dict[str, OpSpec] = {**OPS, **MHC_OPS}
"""Every op the reference implements (:data:`OPS` and :data:`MHC_OPS`), by name."""

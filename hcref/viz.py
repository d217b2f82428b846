"""Pictures of a checkpoint's connections: ``python -m hcref.viz CHECKPOINT [--out DIR]``.

Needs matplotlib (``pip install "hcref[viz]"``), imported only when drawing; the matrices are
computed here with NumPy (:func:`connection_matrix`, :func:`unfolded_connectivity`,
:func:`residual_gains`) and can be used without it. The checkpoint is an hcref checkpoint
(:mod:`hcref.checkpoint`); its sites, in file order, are taken as one stack per family. Files
written to ``DIR`` (default: ``<checkpoint name>-pictures`` beside the checkpoint):

``static.png``
    each site's learned static connection matrix as a heat map: HC the (n+1) x (n+1) matrix
    ``[[0, B], [A_m, A_r]]`` (HC paper Sec. 2.1), FC the (m+1) x 2m matrix ``[[0, B], [Y, A]]``
    (FC paper Eq. 8), mHC ``[[0, h_post], [h_pre, h_res^T]]`` of its static logits ``b`` (the HC
    orientation of decision D8). Row 0 is the write (to each stream), column 0 (HC) or the first m
    columns (FC) the read, the rest the stream mixing, input stream i (row) to output stream j.
``mean.png``
    the same matrices averaged over tokens of the dynamic coefficients, when the checkpoint carries
    recorded means (``hcref.checkpoint.Recorder`` / the backends' ``checkpoint.record``; a
    checkpoint cannot know its model's inputs, so they are recorded where the model runs).
``connectivity-<family>.png``
    the unfolded depth connectivity of the stack (HC paper App. F, math.md 2.7): how much of each
    source (the embedding, each sublayer's output) reaches each target (each sublayer's input, the
    stack's output), ``c_kj = B^j (prod_{t=j+1}^{k-1} A_r^t) A_m^k``; from the static matrices and,
    if recorded, from the means. FC's entries are m x m blocks (source fraction x target fraction).
``gain-<family>.png``
    the mHC paper's Amax gain magnitude of the residual mixing across depth: for each depth l the
    single map ``R_l`` and the composite ``R_l ... R_1`` (``R = h_res`` for mHC, ``A_r^T`` for HC,
    ``A^T`` for FC, so that ``x_{l+1} = R_l x_l``), forward gain = max absolute row sum, backward
    gain = max absolute column sum (mHC paper Sec. 3 / Fig. 3, math.md 7). Drawn from the static
    maps and, if recorded, from the mean maps (the gain of the mean map, not the paper's mean of
    per-token gains; equal for static sites).

mHC sites: their static maps are ``hcref.mhc_coeffs`` of the static logits ``b`` (the dynamic
projection ``phi`` set to zero), their mean maps the recorded ``mean_h_pre``, ``mean_h_post``,
``mean_h_res``. The mHC head (a learned reduce) is not drawn.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._arrays import Array
from .checkpoint import Site, load


@dataclass(frozen=True)
class Maps:
    """One site's read, mix and write in HC terms (HC paper Eq. 2 generalised).

    ``read`` (k, q): from the k state rows to the q sublayer-input parts (HC/mHC q = 1: ``A_m``,
    ``h_pre``; FC q = m: ``Y``); ``mix`` (k, k): input row i to output row j (``A_r``, ``A``,
    ``h_res^T``); ``write`` (p, k): from the p sublayer-output parts to the state rows (HC/mHC
    p = 1: ``B``, ``h_post``; FC: ``diag(B)``).
    """

    family: str
    read: Array
    mix: Array
    write: Array


def _mhc_maps(site: Site) -> tuple[Array, Array, Array]:
    """The static maps of an mHC site: ``mhc_coeffs`` with the dynamic projection zeroed (logits = b)."""
    import hcref

    params = {key: np.asarray(value, np.float64) for key, value in site.params.items()}
    if "phi" in params:
        params["phi"] = np.zeros_like(params["phi"])
    h_pre, h_post, h_res = hcref.mhc_coeffs(np.ones((site.rate, site.d)), params, **site.options)
    return h_pre, h_post, h_res


def site_maps(site: Site, *, mean: bool = False) -> Maps | None:
    """The static maps of ``site`` (``mean=False``) or its recorded mean maps (``mean=True``);
    ``None`` when there are none (no recorded means; the mHC head, which is not a residual site)."""
    f64 = {key: np.asarray(value, np.float64) for key, value in (site.stats if mean else site.params).items()}
    if mean and not site.stats:
        return None
    k = site.rate
    if site.family == "hc":
        if mean:
            A_m, A_r, B = f64["mean_alpha"][:, 0], f64["mean_alpha"][:, 1:], f64["mean_beta"]
        else:
            A_m, A_r, B = f64["A_m"], f64["A_r"], f64["B"]
        return Maps("hc", A_m[:, None], A_r, B[None, :])
    if site.family == "fc":
        if mean:
            Y, A, B = f64["mean_alpha"][:, :k], f64["mean_alpha"][:, k:], f64["mean_beta"]
        else:
            Y, A, B = f64["Y"], f64["A"], f64["B"]
        return Maps("fc", Y, A, np.diag(B))
    if site.family == "mhc":
        if mean:
            h_pre, h_post, h_res = f64["mean_h_pre"], f64["mean_h_post"], f64["mean_h_res"]
        else:
            h_pre, h_post, h_res = _mhc_maps(site)
        return Maps("mhc", h_pre[:, None], h_res.T, h_post[None, :])
    return None


def connection_matrix(maps: Maps) -> Array:
    """HC/mHC ``[[0, B], [A_m, A_r]]`` ((n+1) x (n+1)); FC ``[[0, B], [Y, A]]`` ((m+1) x 2m)."""
    k = maps.mix.shape[0]
    write_row = np.diag(maps.write) if maps.family == "fc" else maps.write[0]
    top = np.concatenate([np.zeros(maps.read.shape[1]), write_row])
    return np.vstack([top[None, :], np.concatenate([maps.read, maps.mix], axis=1)]).reshape(k + 1, -1)


def unfolded_connectivity(stack: Sequence[Maps]) -> Array:
    """The unfolded depth connectivity of a stack (HC paper App. F; math.md 2.7).

    Returns ``C`` of shape (L+1, L+1, p, q): ``C[t, s]`` is the linear map from source ``s`` to
    target ``t`` in parts (p source parts x q target parts: 1 x 1 for HC/mHC, m x m for FC).
    Sources: 0 = the embedding (HC: copied to every stream; FC: split into fractions), s = j+1 =
    the output of sublayer j. Targets: t = k < L the input of sublayer k, t = L the stack's output
    (HC: sum of the streams; FC: the merged fractions). For HC,
    ``C[k, j+1] = B^j A_r^{j+1} ... A_r^{k-1} A_m^k`` (the paper's ``c_kj``); zero unless s <= t.
    """
    if not stack:
        raise ValueError("stack: expected at least one site")
    k = stack[0].mix.shape[0]
    p = stack[0].write.shape[0]
    q = stack[0].read.shape[1]
    L = len(stack)
    C = np.zeros((L + 1, L + 1, p, q))
    embed = np.eye(k) if p > 1 else np.ones((1, k))
    sources: list[Array] = [embed]  # each source's contribution to the state rows: (p, k)
    for t, maps in enumerate(stack):
        for s, V in enumerate(sources):
            C[t, s] = V @ maps.read
        sources = [V @ maps.mix for V in sources] + [maps.write]
    final = np.eye(k) if p > 1 else np.ones((k, 1))
    for s, V in enumerate(sources):
        C[L, s] = V @ final
    return C


def residual_gains(stack: Sequence[Maps]) -> dict[str, Array]:
    """Amax gains of the residual maps across depth (mHC paper Sec. 3, Fig. 3; math.md 7).

    ``R_l = mix_l^T`` (the state update ``x_{l+1} = R_l x_l``); returns ``single_forward`` /
    ``single_backward`` (max absolute row / column sum of ``R_l``) and ``composite_forward`` /
    ``composite_backward`` (of ``R_l ... R_1``), each of length L.
    """
    out: dict[str, list[float]] = {
        k: [] for k in ("single_forward", "single_backward", "composite_forward", "composite_backward")
    }
    P: Array | None = None
    for maps in stack:
        R = maps.mix.T
        P = R if P is None else R @ P
        for prefix, M in (("single", R), ("composite", P)):
            out[f"{prefix}_forward"].append(float(np.abs(M).sum(axis=1).max()))
            out[f"{prefix}_backward"].append(float(np.abs(M).sum(axis=0).max()))
    return {key: np.asarray(value) for key, value in out.items()}


# --- drawing ---------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            'hcref.viz draws with matplotlib: pip install "hcref[viz]" (or pip install matplotlib)'
        ) from err
    return Figure(figsize=(width, height), layout="constrained")


def _label(site: Site) -> str:
    family = site.family.upper().replace("MHC", "mHC")
    where = f", layer {site.layer_index}" if site.layer_index is not None else ""
    return f"{site.name} ({family}{where})"


def _heat(ax: Any, M: Array, title: str, *, annotate: bool = True) -> Any:
    vmax = float(np.abs(M).max()) or 1.0
    image = ax.imshow(M, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_title(title, fontsize=8)
    ax.set_xticks(range(M.shape[1]))
    ax.set_yticks(range(M.shape[0]))
    ax.tick_params(labelsize=6)
    if annotate and M.size <= 64:
        for (i, j), value in np.ndenumerate(M):
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=5,
                color="white" if abs(value) > 0.6 * vmax else "black",
            )
    return image


def _tick_labels(family: str, k: int) -> tuple[list[str], list[str]]:
    """Column and row labels of :func:`connection_matrix`: the read, then the mixing into stream j;
    the write row, then input stream i."""
    streams = [str(j) for j in range(k)]
    if family == "fc":
        return [f"Y{j}" for j in range(k)] + [f"A{j}" for j in range(k)], ["B", *streams]
    if family == "mhc":
        return ["pre", *streams], ["post", *streams]
    return ["A_m", *streams], ["B", *streams]


def _matrices_picture(pairs: list[tuple[Site, Maps]], path: Path, what: str) -> Path:
    cols = min(len(pairs), 4)
    rows = math.ceil(len(pairs) / cols)
    fig = _figure(2.6 * cols, 2.6 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(pairs) :]:
        ax.set_axis_off()
    for ax, (site, maps) in zip(axes.flat, pairs):
        image = _heat(ax, connection_matrix(maps), _label(site))
        column_labels, row_labels = _tick_labels(maps.family, maps.mix.shape[0])
        ax.set_xticks(range(len(column_labels)), column_labels)
        ax.set_yticks(range(len(row_labels)), row_labels)
        fig.colorbar(image, ax=ax, shrink=0.7).ax.tick_params(labelsize=6)
    fig.suptitle(f"{what} connection matrices: top row = write; then per input stream (row) its read | mix", fontsize=9)
    fig.savefig(path, dpi=120)
    return path


def _connectivity_picture(family: str, stacks: list[tuple[str, list[Maps]]], path: Path) -> Path:
    fig = _figure(4.2 * len(stacks), 4.0)
    axes = fig.subplots(1, len(stacks), squeeze=False)[0]
    for ax, (what, stack) in zip(axes, stacks):
        C = unfolded_connectivity(stack)
        L, _, p, q = C.shape
        dense = C.transpose(0, 3, 1, 2).reshape(L * q, L * p)  # rows: target parts, cols: source parts
        image = _heat(ax, dense, f"{what}: unfolded connectivity ({family.upper()})", annotate=p == 1)
        ax.set_xticks([p * s + (p - 1) / 2 for s in range(L)], ["emb"] + [str(j) for j in range(L - 1)])
        ax.set_yticks([q * t + (q - 1) / 2 for t in range(L)], [str(k) for k in range(L - 1)] + ["out"])
        ax.set_xlabel("source: embedding, output of sublayer j", fontsize=7)
        ax.set_ylabel("target: input of sublayer k, stack output", fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.7).ax.tick_params(labelsize=6)
    fig.savefig(path, dpi=120)
    return path


def _gain_picture(family: str, stacks: list[tuple[str, list[Maps]]], path: Path) -> Path:
    fig = _figure(5.5, 3.6)
    ax = fig.subplots()
    styles = {"static": "-", "mean": "--"}
    values: list[float] = []
    for what, stack in stacks:
        gains = residual_gains(stack)
        depth = np.arange(1, len(stack) + 1)
        for key, color in (
            ("composite_forward", "C0"),
            ("composite_backward", "C3"),
            ("single_forward", "C2"),
            ("single_backward", "C1"),
        ):
            ax.plot(
                depth,
                gains[key],
                styles.get(what, "-"),
                color=color,
                marker=".",
                label=f"{what} {key.replace('_', ' ')}",
            )
            values.extend(gains[key].tolist())
    ax.axhline(1.0, color="0.6", lw=0.8)
    if max(values) > 10 * max(min(values), 1e-300):  # log scale only where the gains span decades
        ax.set_yscale("log")
    ax.set_xticks(range(1, len(stacks[0][1]) + 1))
    ax.set_xlabel("depth l (sites)")
    ax.set_ylabel("Amax gain magnitude")
    ax.set_title(f"{family.upper()} residual mixing: forward (row sum) / backward (column sum) gain", fontsize=8)
    ax.legend(fontsize=6)
    fig.savefig(path, dpi=120)
    return path


def render(sites: Sequence[Site], out: str | Path) -> list[Path]:
    """Draw every picture the sites allow into ``out`` (created); returns the files written.

    Prints a note for each picture it cannot draw (no recorded means, mHC without the mHC reference).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sites = [site for site in sites if site.family != "mhc_head"]  # a learned reduce, not a residual site
    static = [(site, site_maps(site)) for site in sites]
    mean = [(site, site_maps(site, mean=True)) for site in sites]
    have_static = [(site, maps) for site, maps in static if maps is not None]
    have_mean = [(site, maps) for site, maps in mean if maps is not None]
    if have_static:
        written.append(_matrices_picture(have_static, out / "static.png", "static"))
    if have_mean:
        written.append(_matrices_picture(have_mean, out / "mean.png", "mean (over recorded tokens)"))
    else:
        print("note: no recorded mean coefficients in the checkpoint: mean.png not drawn")
    for family in ("hc", "fc", "mhc"):
        stacks = []
        for what, pairs in (("static", static), ("mean", mean)):
            of_family = [(site, maps) for site, maps in pairs if site.family == family]
            if of_family and all(maps is not None for _, maps in of_family):
                stacks.append((what, [maps for _, maps in of_family if maps is not None]))
        if stacks:
            written.append(_connectivity_picture(family, stacks, out / f"connectivity-{family}.png"))
            written.append(_gain_picture(family, stacks, out / f"gain-{family}.png"))
    return written


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(
        prog="python -m hcref.viz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="an hcref checkpoint (.safetensors)")
    parser.add_argument("--out", help="folder for the pictures (default: <checkpoint name>-pictures beside it)")
    args = parser.parse_args(argv)
    path = Path(args.checkpoint)
    out = Path(args.out) if args.out else path.with_name(path.stem + "-pictures")
    try:
        written = render(load(path), out)
    except (ImportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for file in written:
        print(file)
    return written


if __name__ == "__main__":
    main()

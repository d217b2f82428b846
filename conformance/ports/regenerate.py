"""Regenerate ``docs/conformance-of-public-implementations.md``: every public implementation with an
adapter in this folder, run through the conformance suite, with the named properties that hold,
those that depart and the smallest input that shows each.

    python conformance/ports/regenerate.py                 # all ports, float64 and float32, quick profile
    python conformance/ports/regenerate.py --out /tmp/x.md --dtypes float64

Each port runs in its own interpreter (``python -m hcref_conformance --backend FILE:port``); a port
whose library is not installed is listed as such when writing elsewhere (``--out``); the committed
page is rewritten only when every port runs (or with ``--allow-missing``), so no verdict is lost
silently. The page holds no timings or dates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(ROOT, "docs", "conformance-of-public-implementations.md")


@dataclass(frozen=True)
class Port:
    """A public implementation and its adapter in this folder."""

    file: str
    library: str
    project: str
    install: str
    adapter_needed: str
    attr: str = "port"
    module: str = ""
    ci: bool = True
    """Whether CI runs this port at a pinned version (quick, reliable install); the others are
    documented here with their command."""


PORTS = (
    Port(
        "lucidrains_hyper_connections.py", "hyper-connections",
        "lucidrains/hyper-connections (PyPI `hyper-connections`)",
        'pip install "hyper-connections==0.4.11"',
        "HC and FC are one module, `HyperConnections(n, dim, num_fracs=m)`, run whole through the module-level "
        "entry (`site()`), with the contract's parameters swapped in by `torch.func.functional_call` and the "
        "suite's sublayer as the module's `branch`. Reshapes only between the library's layouts (streams folded "
        "into the batch axis, fractions merged) and the contract's. Parameter map: `static_alpha = [A_m | A_r]`, "
        "`norm.gamma = norm_weight - 1` (its RMSNorm scales by 1 + gamma); for FC the library interleaves the "
        "read and residual columns per fraction, and its write projection is (e, m): every column is set to "
        "`W_beta`, so the diagonal of its (m, m) write equals the contract's and the off-diagonal terms stay as "
        "the library computes them. Initial values are read off a fresh module. Declared: rmsnorm with epsilon "
        "0, only `use_tanh` switchable, dynamic only, no mixed precision.",
    ),
    Port(
        "lucidrains_hyper_connections.py", "hyper-connections",
        "lucidrains/hyper-connections, mHC (`ManifoldConstrainedHyperConnections`)",
        'pip install "hyper-connections==0.4.11"',
        "The module `ManifoldConstrainedHyperConnections(n, dim=d, sinkhorn_iters=iters)` run whole through `site()` "
        "with the contract's logits swapped in by `torch.func.functional_call`: `static_alpha = [b_pre | "
        "mat(b_res)^T]` (its alpha is (input, output), the contract's h_res (output, input)), `static_beta = b_post`, "
        "its projections zero. Its dynamic projection is per stream (each stream's RMS-normed d values, RMSNorm "
        "without epsilon, times one (d, 1 + n) matrix shared by the streams) where the paper's phi sees the whole "
        "flattened n*d token: no contract phi maps onto it, so only static sites are declared. It computes in "
        "float32 whatever the input dtype, so float64 is not declared. Initial logits are read off a fresh module.",
        attr="mhc_port",
    ),
    Port(
        "pypi_mhc_mlx.py", "mhc-mlx", "PyPI `mhc-mlx` (MLX; its pure-MLX reference, `mhc_mlx.reference`)",
        'pip install --no-deps "mhc-mlx==0.6.3"',
        "Its reference steps (`activate_pre_post`, `mixing_matrix_from_logits`, `stream_aggregate`, `stream_mix_ref`, "
        "`stream_distribute`) composed as its `mhc_forward_reference` does, with the suite's sublayer where that "
        "function applies its fixed `rms_norm`; logits per layer (no projection of the state), so static sites only; "
        "`expand`/`reduce` written by the adapter (the library takes the expanded state as given); its functions "
        "take one (n, n) matrix, so the adapter loops over leading axes; computes in float32 (no float64 declared).",
        module="mhc_mlx", ci=False,
    ),
    Port(
        "pypi_mlx_mhc.py", "mlx-mhc", "PyPI `mlx-mhc` (MLX)",
        'pip install --no-deps "mlx-mhc==0.4.1"',
        "Only its Sinkhorn (`mlx_mhc.sinkhorn.sinkhorn_knopp`, log space, early stop at 1e-6) as the `sinkhorn` op, "
        "looped over leading axes (it takes one matrix): its module scales the expanded width per stream "
        "(`H_pre * x`) instead of reading a weighted sum of the streams, and applies `H_post` to the residual too, "
        "so no contract site maps onto it. No float64 (MLX's CPU float64 exp is ~1e-7 accurate).",
        module="mlx_mhc", ci=False,
    ),
    Port(
        "pypi_mhc.py", "mhc", "PyPI `mhc` (torch; \"stable multi-history skip connections\")",
        'pip install --no-deps "mhc==0.5.5"',
        "Only its Sinkhorn (`mhc.constraints.matrix.project_doubly_stochastic`) as the `sinkhorn` op: its layers mix "
        "a history of past layer outputs, not the paper's Eq. 3 site.",
        module="mhc", ci=False,
    ),
)
NOT_INSTALLABLE = (
    ("mhc-pytorch", "0.2.3", "requires Python >= 3.12 (hcref's environment runs 3.11); no adapter yet"),
    ("mhc-cuda", "0.1.0", "CUDA kernels only (no CPU path); no adapter"),
)
"""mHC packages on PyPI without an adapter here, and why."""
"""Every adapter the page covers."""


def installed(port: Port) -> bool:
    """Whether the port's library imports here."""
    import importlib.util

    return importlib.util.find_spec(port.module or port.library.replace("-", "_")) is not None


def run_port(port: Port, dtypes: str, profile: str, tmp: str) -> dict[str, Any] | None:
    """The port's JSON report, or ``None`` when its library is not installed."""
    if not installed(port):
        return None
    report = os.path.join(tmp, f"{port.file}.{port.attr}.json")
    command = [sys.executable, "-m", "hcref_conformance", "--backend", os.path.join(HERE, port.file) + f":{port.attr}",
               "--dtypes", dtypes, "--profile", profile, "--report-json", report, "-q", "--", "-p", "no:warnings"]
    subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False, timeout=1800)
    with open(report, encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(results: list[tuple[Port, dict[str, Any] | None]], dtypes: str, profile: str) -> str:
    """The page's Markdown."""
    lines = [
        "# Conformance of public implementations",
        "",
        "Public implementations of hyper-connections run through hcref's conformance suite, each through an "
        "adapter in `conformance/ports/` (the library's own code paths, its own initialisation, what it declares "
        "it supports). A *named property* is one sentence of the papers or of the decisions, checked on the "
        "smallest input that shows it; *departs* means the library computes something else there, with the input "
        "and what differs. What a library does not declare is n/a, never a failure.",
        "",
        f"Regenerate with `python conformance/ports/regenerate.py` (dtypes {dtypes}, profile {profile}).",
        "",
        "## Summary",
        "",
        "| implementation | version | named properties that hold | that depart | checks that fail |",
        "|---|---|---|---|---|",
    ]
    for port, doc in results:
        if doc is None:
            lines.append(f"| {port.project} | not installed here | | | |")
            continue
        families = doc.get("families") or []
        props = [p for p in doc["properties"] if p["family"] in families]
        holds = ", ".join(p["id"] for p in props if p["verdict"] == "holds")
        departs = ", ".join(f"**{p['id']}**" for p in props if p["verdict"] in ("departs", "error"))
        failing = ", ".join(sorted({f"{r['op']} ({r['dtype']})" for r in doc["rows"] if r["status"] == "FAIL"}))
        lines.append(f"| {port.project} | {doc['version']} | {holds or '-'} | {departs or '-'} | {failing or '-'} |")
    for port, doc in results:
        lines += ["", f"## {port.project}", ""]
        if doc is None:
            lines += [f"Not installed here (`{port.install}`); run the command above where it is."]
            continue
        lines += [f"- version: **{doc['name']} {doc['version']}** ({doc['framework_version']}); install: "
                  f"`{port.install}`; adapter: `conformance/ports/{port.file}:{port.attr}`"
                  + ("" if port.ci else " (not run in CI: regenerate where it installs)"),
                  f"- what the adapter needed: {port.adapter_needed}",
                  "- declared: " + "; ".join(line.strip().removeprefix("declares: ") for line in doc["declared"]),
                  "", "### Named properties", "",
                  "| property | source | verdict | input that shows it | what differs |", "|---|---|---|---|---|"]
        families = doc.get("families") or sorted({p["family"] for p in doc["properties"]})
        for p in (p for p in doc["properties"] if p["family"] in families):
            shown = p["input"] if p["verdict"] not in ("holds", "n/a") else ""
            detail = p["detail"] if p["verdict"] != "holds" else ""
            lines.append(f"| {_cell(p['name'])} | {_cell(p['source'])} | **{p['verdict']}** | {_cell(shown)} | "
                         f"{_cell(detail)} |")
        lines += ["", "### Ops, whole sites, networks and Pre-Norm at init (random and fixed cases)", "",
                  "| check | dtype | status | reason classes |", "|---|---|---|---|"]
        for row in doc["rows"]:
            if row["status"] not in ("n/a", "-"):
                lines.append(f"| {row['op']} | {row['dtype']} | {row['status']} | {', '.join(row['reasons'])} |")
        failures = [f for f in doc["failures"] if f["check"] != "property"]
        if failures:
            lines += ["", "Smallest failing cases of the checks above (rerun any with the repro in the suite's "
                      "report):", ""]
            seen = set()
            for f in failures:
                key = (f["op"], f["dtype"], f["reason"], f["label"], f["magnitude"])
                if key not in seen:
                    seen.add(key)
                    size = f" {f['magnitude']}" if f["magnitude"] != "-" else ""
                    lines.append(f"- {f['op']} {f['dtype']} [{f['reason']}]{size} `{f['label']}`: `{f['case']}`")
    lines += ["", "## mHC packages on PyPI without an adapter", ""]
    lines += [f"- `{name}` {version}: {why}" for name, version, why in NOT_INSTALLABLE]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--profile", default="quick")
    known = {f"{p.file}:{p.attr}": p for p in PORTS}
    parser.add_argument("--only", default=None,
                        help=f"comma-separated adapters to run (others: not run); known: {', '.join(known)}")
    parser.add_argument("--allow-missing", action="store_true",
                        help="rewrite the committed page even though some ports are not run (they lose their verdicts)")
    args = parser.parse_args(argv)
    names = list(known) if args.only is None else [name.strip() for name in args.only.split(",")]
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"--only: unknown adapter(s) {', '.join(unknown)}; known: {', '.join(known)}")
    chosen = [known[name] for name in names]
    missing = [port for port in PORTS if port not in chosen or not installed(port)]
    if missing and os.path.abspath(args.out) == DEFAULT_OUT and not args.allow_missing:
        listed = "\n".join(f"  {port.project}: {'not selected' if port not in chosen else port.install}"
                           for port in missing)
        print(f"not rewriting {args.out}: these ports would not run and their verdicts would be lost:\n{listed}\n"
              "install them (mhc-mlx and mlx-mhc ship the same package name: one at a time, each with its own "
              "--out), write elsewhere with --out, or pass --allow-missing", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        results = [(port, run_port(port, args.dtypes, args.profile, tmp)) for port in chosen]
    for port, result in results:
        if result is None:
            print(f"warning: {port.project} is not installed here ({port.install}); listed as such", file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write(render(results, args.dtypes, args.profile))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

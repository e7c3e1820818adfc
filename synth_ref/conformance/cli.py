"""``python -m synth_ref.conformance`` / ``synth-ref-conformance``: run the suite without nox.

Examples::

    synth-ref-conformance --backend torch                 # the ci profile, writes the report
    synth-ref-conformance --backend jax --profile deep
    synth-ref-conformance --adapter mykernels.synth:adapter
    synth-ref-conformance --list                          # registered backends, available or not
    synth-ref-conformance --backend torch -- -x -k dense  # anything after -- goes to pytest
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="synth-ref-conformance",
        description="Check a backend's Synthesizer/AFT layers against the synth-ref reference.",
    )
    p.add_argument("--backend", action="append", default=[],
                   help="registered backend name (repeatable; 'all' = every one)")
    p.add_argument("--adapter", action="append", default=[],
                   help="an adapter that is not registered: package.module:object")
    p.add_argument("--variant", action="append", default=[],
                   help="check only this variant (repeatable)")
    p.add_argument("--profile", choices=("ci", "kernels", "deep"), default="ci",
                   help="ci: fixed derandomized grid + a few drawn cases (default); kernels: a smaller "
                        "grid for the interpreter backends; deep: much more")
    p.add_argument("--report", default="conformance-report.json",
                   help="JSON report to merge into (the Markdown matrix goes next to it)")
    p.add_argument("-n", "--workers", default=None,
                   help="run with pytest-xdist on this many processes ('auto' allowed)")
    p.add_argument("--list", action="store_true", help="list backends and whether they are available")
    p.add_argument("--probe", action="store_true",
                   help="print one JSON line per requested backend: name, available, reason")
    p.add_argument("--unavailable", metavar="REASON", default=None,
                   help="record the --backend as skipped with REASON in the report and print the "
                        "summary, without running anything (nox uses it where no GPU driver exists)")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    return p


def _cwd_importable() -> None:
    """Let ``--adapter my_module:ADAPTER`` find a module in the directory the command runs in, as
    ``python -m synth_ref.conformance`` does and the ``synth-ref-conformance`` console script does
    not (its sys.path starts at the script's own directory): on sys.path here and, for pytest-xdist
    workers, on PYTHONPATH."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if cwd not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([cwd, *parts])


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .. import backends

    if args.list:
        for n in backends.names():
            ok, why = backends.available(n)
            print(f"{n:<24} {'available' if ok else 'unavailable'}  {why}")
        return 0
    if args.probe:
        for n in args.backend or ["numpy"]:
            ok, why = backends.available(n)
            print(json.dumps({"name": n, "available": ok, "reason": why}))
        for spec in args.adapter:
            try:
                a = backends.load(spec)
                ok, why = backends.safe_available(a)
            except Exception as exc:  # noqa: BLE001
                ok, why = False, f"{type(exc).__name__}: {exc}"
            print(json.dumps({"name": spec, "available": ok, "reason": why}))
        return 0

    if args.unavailable is not None:
        from . import report as R

        entries = [R.backend_entry(n, None, False, args.unavailable, [], args.profile, 0.0)
                   for n in args.backend or ["?"]]
        path, md = R.write(args.report, entries)
        print(R.summary(R.load(path), md_path=md))
        return 0

    import pytest

    if args.adapter:
        _cwd_importable()
    suite = Path(__file__).with_name("suite.py")
    cmd = [str(suite), "-p", "synth_ref.conformance.plugin", "-p", "no:cacheprovider",
           "--profile", args.profile, "--report", args.report, "-q", "-ra"]
    for b in args.backend:
        cmd += ["--backend", b]
    for a in args.adapter:
        cmd += ["--adapter", a]
    for v in args.variant:
        cmd += ["--variant", v]
    if args.workers:
        if importlib.util.find_spec("xdist") is None:
            print("synth-ref-conformance: pytest-xdist is not installed; running in one process",
                  file=sys.stderr)
        else:
            cmd += ["-n", str(args.workers)]
    cmd += args.pytest_args
    return int(pytest.main(cmd))

"""The pytest plugin that parametrizes the suite over backends and records the report.

Options: ``--backend NAME`` (repeatable; ``all`` = every registered backend), ``--adapter
package.module:object`` (repeatable), ``--profile ci|deep``, ``--report PATH``.  Without
``--backend``/``--adapter`` the suite runs on ``numpy``.  Loaded by ``conformance/conftest.py``
and by ``python -m synth_ref.conformance``; results travel in each test's ``user_properties`` so
that they also reach the controller under pytest-xdist.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from .. import backends
from ..backends import claimed_variants, has_vjp
from . import cases as C
from . import check as K
from . import gold as G
from . import report as R

_KEY = "synth_ref_conformance"
#: Seconds between the snapshots a running suite writes to its report.  A run stopped from outside
#: (a time limit's SIGTERM or SIGKILL, as on a lent GPU) never reaches pytest_sessionfinish; the last
#: snapshot keeps what it checked, marked incomplete.  Writing costs milliseconds.
SNAPSHOT_EVERY = 15.0


@dataclass
class Target:
    label: str
    adapter: object | None
    ok: bool
    reason: str

    def __repr__(self):  # pytest ids
        return self.label


def _targets(config) -> list[Target]:
    """The backends and adapters to certify.  One named explicitly (``--backend NAME``,
    ``--adapter module:object``) that cannot be loaded -- an unknown name, a module that does not
    import, an object that is not an adapter -- is a usage error: recorded as skipped it made the run
    exit 0 with nothing checked, so a typo passed CI.  One that loads but says it is unavailable
    (``available()`` is False: no GPU here) is skipped with its reason, as documented; so is a
    broken entry point met only through ``--backend all``."""
    explicit = []
    for b in config.getoption("--backend") or []:
        explicit += [n for n in b.split(",") if n]
    names = list(explicit)
    if "all" in names:
        names = [n for n in names if n != "all"] + [n for n in backends.names() if n not in names]
    adapters = config.getoption("--adapter") or []
    if not names and not adapters:
        names = ["numpy"]
    out, broken = [], []
    for n in names:
        try:
            a = backends.get(n)
        except Exception as exc:  # noqa: BLE001 - report, do not crash collection
            why = f"{type(exc).__name__}: {exc}"
            if n in explicit:
                broken.append(f"--backend {n}: {why}")
            out.append(Target(n, None, False, why))
            continue
        ok, why = backends.safe_available(a)
        out.append(Target(a.name if n in backends.BUILTIN else n, a, ok, why))
    for spec in adapters:
        try:
            a = backends.load(spec)
        except Exception as exc:  # noqa: BLE001
            broken.append(f"--adapter {spec}: could not load it ({type(exc).__name__}: {exc})")
            continue
        ok, why = backends.safe_available(a)
        out.append(Target(a.name, a, ok, why))
    if broken:
        hint = ("; the module must be importable here: installed, on PYTHONPATH, or under the "
                "directory the command runs in" if any(s.startswith("--adapter") for s in broken) else "")
        raise pytest.UsageError("synth-ref conformance: " + "; ".join(broken) + hint)
    return out


def pytest_addoption(parser):
    g = parser.getgroup("synth-ref conformance")
    g.addoption("--backend", action="append", default=[],
                help="backend to certify (repeatable, or comma-separated; 'all' for every one)")
    g.addoption("--adapter", action="append", default=[],
                help="certify the adapter at package.module:object (repeatable)")
    g.addoption("--profile", default="ci", choices=("ci", "kernels", "deep"),
                help="ci: fixed derandomized grid and few drawn cases; kernels: fewer, for the "
                     "interpreter backends; deep: more of both")
    g.addoption("--variant", action="append", default=[],
                help="check only these variants (repeatable, or comma-separated)")
    g.addoption("--report", default=None,
                help="merge results into this JSON report and write the Markdown matrix next to it")


def _hypothesis_profiles():
    from hypothesis import HealthCheck, settings

    common = dict(
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                               HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )
    settings.register_profile("synth-ref-ci", max_examples=12, derandomize=True, database=None, **common)
    settings.register_profile("synth-ref-kernels", max_examples=2, derandomize=True, database=None,
                              **common)
    settings.register_profile("synth-ref-deep", max_examples=300, **common)


def pytest_configure(config):
    config.addinivalue_line("markers", "conformance: a check of a backend against the reference")
    session = Session(config)
    config.stash[_STASH] = session
    config.pluginmanager.register(session, "synth-ref-conformance-session")
    try:
        _hypothesis_profiles()
        from hypothesis import settings

        settings.load_profile("synth-ref-" + session.profile)
    except ImportError:
        pass


def _check_id(case, dtype) -> str:
    """The id of a grid check after its target's label: "<case id>-<dtype>"."""
    return f"{case.id}-{dtype}"


def record(item, outcome) -> None:
    """Attach one check's outcome to the running test (picked up by the report)."""
    item.user_properties.append(("conformance", outcome.to_dict()))


class Session:
    """Per-run state and the hooks that need it."""

    def __init__(self, config):
        self.config = config
        self.profile = config.getoption("--profile")
        self.report = config.getoption("--report")
        picked = [v for o in config.getoption("--variant") or [] for v in o.split(",") if v]
        self.variants = tuple(picked) or None
        self.records: list[dict] = []
        self.gold_check: dict[str, float] = {}
        self.teeth: list = []  # (defect, checks that caught it, checks run, first failure)
        self.started = time.time()
        self.targets = _targets(config)
        self.frameworks = G.configure_frameworks()
        self.ran_suite = False
        self.written = None
        self.planned = None  # checks collected (the controller's count under xdist)
        self.last_snapshot = time.monotonic()
        self.lost: list[str] = []  # node ids of checks that ended without a result and map to no case
        self._ids = None

    def pytest_generate_tests(self, metafunc):
        names = metafunc.fixturenames
        if "conformance_target" in names:
            metafunc.parametrize("conformance_target", self.targets, ids=[t.label for t in self.targets])
        if "grid_case" in names and "conformance_dtype" in names:
            grid = C.grid(self.profile, self.variants)
            # every dtype: collection_modifyitems keeps, per target, the case's own dtypes that it
            # claims or, where it claims none of them, its widest (cases.check_dtypes)
            pairs = [(c, d) for c in grid for d in C.DTYPES]
            metafunc.parametrize(
                "grid_case,conformance_dtype", pairs, ids=[_check_id(c, d) for c, d in pairs]
            )
        if "fd_case" in names:
            fd = [c for c in C.finite_difference_cases()
                  if self.variants is None or c.variant in self.variants]
            metafunc.parametrize("fd_case", fd, ids=[c.variant for c in fd])

    def pytest_collection_modifyitems(self, config, items):
        """Drop the checks a backend does not claim (a dtype outside ``adapter.dtypes``, a variant
        outside ``adapter.variants``, gradients of a forward-only adapter): the report shows those
        cells as not claimed."""
        keep, drop = [], []
        for item in items:
            cs = getattr(item, "callspec", None)
            t = cs.params.get("conformance_target") if cs else None
            case = cs.params.get("grid_case") if cs else None
            dtype = cs.params.get("conformance_dtype") if cs else None
            kind = "gradient" if item.originalname == "test_gradient" else "forward"
            if t is None or not t.ok:  # skipped with the reason: once per check the grid lists
                listed = case is None or dtype in C.listed_dtypes(case, kind)
                (keep if listed else drop).append(item)
                continue
            unclaimed = dtype is not None and dtype not in t.adapter.dtypes
            if case is not None and dtype is not None:
                unclaimed = unclaimed or dtype not in C.check_dtypes(case, t.adapter.dtypes, kind)
            unclaimed = unclaimed or (case is not None and case.variant not in claimed_variants(t.adapter))
            no_vjp = item.originalname == "test_gradient" and not has_vjp(t.adapter)
            (drop if unclaimed or no_vjp else keep).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def pytest_collection_finish(self, session):
        if not hasattr(self.config, "workerinput"):  # one process: it collected everything
            self.planned = len(session.items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        self.planned = len(ids)  # every worker collects the whole (deselected) list

    def pytest_runtest_logreport(self, report):
        # on the controller this also sees xdist workers' reports
        if report.failed and not hasattr(self.config, "workerinput"):
            self._unrecorded(report)
        if report.when != "call":
            return
        for key, value in report.user_properties:
            if key == "conformance":
                self.records.append(value)
                self.ran_suite = True
            elif key == "conformance_gold_check":
                self.gold_check[value[0]] = value[1]
            elif key == "conformance_teeth":
                self.teeth.append(value)
        if (self.report and self.ran_suite and not hasattr(self.config, "workerinput")
                and time.monotonic() - self.last_snapshot >= SNAPSHOT_EVERY):
            self.snapshot("stopped before its end: a time limit or a crash")

    def _unrecorded(self, report) -> None:
        """A suite check that failed without recording its outcome: its process died (xdist reports
        a crashed worker's test with ``when == "???"``: a segfault, an abort, a CUDA context lost)
        or the harness itself raised.  Without this the report would miss the check and could read
        pass; it becomes an error record of its cell, or, where the node id names no grid case (a
        Hypothesis-drawn check), marks the run incomplete."""
        if any(key == "conformance" for key, _ in report.user_properties):
            return
        name, _, param = report.nodeid.partition("::")[2].partition("[")
        if name not in ("test_forward", "test_gradient", "test_drawn"):
            return
        param = param[:-1]
        line = str(report.longrepr).strip().splitlines()
        detail = f"the check ended without a result ({report.when}): {line[-1] if line else '?'}"
        # the longest label first: "torch-cuda-<case>" must not be read as target "torch"
        for t in sorted(self.targets, key=lambda t: -len(t.label)):
            if not (t.ok and (param == t.label or param.startswith(t.label + "-"))):
                continue
            found = self._grid_ids().get(param[len(t.label) + 1:]) if name != "test_drawn" else None
            if found is None:
                self.lost.append(report.nodeid)
                return
            case, dtype = found
            kind = "forward" if name == "test_forward" else "gradient"
            self.records.append(K.Outcome(t.adapter.name, case.variant, dtype, kind, case.id, "error",
                                          detail=detail, reproduce=case.describe(),
                                          blame="adapter" if report.when == "???" else "harness").to_dict())
            self.ran_suite = True
            return

    def _grid_ids(self) -> dict:
        """Test id suffix ("<case id>-<dtype>") -> (case, dtype), as pytest_generate_tests makes them."""
        if self._ids is None:
            self._ids = {_check_id(c, d): (c, d) for c in C.grid(self.profile, self.variants)
                         for d in C.DTYPES}
        return self._ids

    def snapshot(self, why: str) -> None:
        """Write what has been checked so far, marked incomplete (see SNAPSHOT_EVERY)."""
        self.written = R.write(self.report, self.entries(why), self.gold_check)
        self.last_snapshot = time.monotonic()

    def entries(self, incomplete: str | None = None) -> list[dict]:
        """One report entry per target; ``incomplete``: why the run has not reached its end."""
        out = []
        seconds = time.time() - self.started
        lost = self.lost and f"{len(self.lost)} checks ended without a result (first: {self.lost[0]})"
        for t in self.targets:
            name = t.adapter.name if t.adapter is not None else t.label
            recs = [r for r in self.records if r["backend"] == name]
            why = "; ".join(w for w in (incomplete, lost) if w)
            partial = {"recorded": len(recs), "planned": self.planned, "why": why} if why and t.ok else None
            if not t.ok or recs:
                out.append(R.backend_entry(name, t.adapter, t.ok, t.reason, recs, self.profile, seconds,
                                           partial))
        return out

    def pytest_sessionfinish(self, session, exitstatus):
        if hasattr(self.config, "workerinput"):  # an xdist worker: the controller writes
            return
        if self.report and (self.ran_suite or any(not t.ok for t in self.targets)):
            interrupted = exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop
            why = f"interrupted: {session.shouldstop or 'Ctrl-C or SIGINT'}" if interrupted else None
            self.written = R.write(self.report, self.entries(why), self.gold_check)

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        if hasattr(config, "workerinput"):
            return
        if self.teeth:
            terminalreporter.write_line("")
            terminalreporter.write_line("synth-ref conformance teeth: deliberately wrong adapters")
            for name, caught, total, first in self.teeth:
                verdict = "caught" if caught else "MISSED"
                terminalreporter.write_line(f"  {verdict:<7}{name:<38} by {caught:>3} of {total:>3} checks")
                if caught:
                    terminalreporter.write_line(f"         first: {first}")
        if not (self.ran_suite or self.gold_check or self.written):
            return
        entries = self.entries()
        if self.written:
            text = R.summary(R.load(self.written[0]), only=[e["name"] for e in entries],
                             md_path=self.written[1])
        else:
            text = R.summary({"backends": {e["name"]: e for e in entries}, "gold_check": self.gold_check})
        for line in text.splitlines():
            terminalreporter.write_line(line)


def session(config) -> Session:
    return config.stash[_STASH]


_STASH = pytest.StashKey[Session]()

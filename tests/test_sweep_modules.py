"""The sweep's modules (issue 23): the backends implement one small protocol, the Ray
backend needs only the group computation (no import of the sweep), and the names the
sweep module always had stay importable from it."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_architecture import cycles, import_graph  # noqa: E402

ENGINE = "petseg_bench.engine."


class InlineRay:
    """Just enough of Ray for a RayBackend to start: tasks run here, at once."""

    class exceptions:  # noqa: N801 - ray.exceptions
        class RayError(Exception):
            pass

        class RayTaskError(RayError):
            pass

    def __init__(self):
        self.up = False

    def is_initialized(self):
        return self.up

    def init(self, **kwargs):
        self.up = True

    def shutdown(self):
        self.up = False

    def remote(self, **options):
        def wrap(fn):
            return type("Task", (), {"remote": staticmethod(lambda *args: fn(*args))})
        return wrap

    def get(self, ref):
        return ref

    def nodes(self):
        return [{"Alive": True}]

    def cluster_resources(self):
        return {"CPU": 2}


def test_the_backends_implement_the_protocol(monkeypatch, tmp_path):
    from petseg_bench.engine import ray_backend
    from petseg_bench.engine.backend import Backend, LocalBackend, open_backend
    from petseg_bench.engine.plan import SweepJob, SweepPlan
    from petseg_bench.run_record import RuntimeFacts

    for cls in (LocalBackend, ray_backend.RayBackend):
        for name in ("load", "run"):
            want = list(inspect.signature(getattr(Backend, name)).parameters)
            assert list(inspect.signature(getattr(cls, name)).parameters) == want, (cls.__name__, name)
    job = SweepJob(plan=SweepPlan(["m"], ["p"], [1]), checkpoints_dir=tmp_path, run_dir=tmp_path / "run",
                   data_root=tmp_path, device="cpu", precision="fp32")
    monkeypatch.setattr(ray_backend, "import_ray", InlineRay)
    for kind in ("local", "ray"):
        job.backend = kind
        with open_backend(job, lambda line: None) as backend:
            assert isinstance(backend, Backend) and isinstance(backend.runtime, RuntimeFacts)
            assert backend.runtime.precision == "fp32" and backend.runtime.device.startswith("cpu")


def test_the_sweep_modules_import_downwards_only():
    graph = import_graph()
    sweep_side = {ENGINE + m for m in ("sweep", "backend", "sweep_record")}
    assert not graph[ENGINE + "ray_backend"] & sweep_side, "the Ray backend needs only the groups"
    assert not graph[ENGINE + "groups"] & (sweep_side | {ENGINE + "ray_backend", ENGINE + "plan"})
    assert ENGINE + "ray_backend" not in graph[ENGINE + "sweep"]  # only through open_backend
    engine = {m: {t for t in ts if t.startswith(ENGINE)} for m, ts in graph.items() if m.startswith(ENGINE)}
    assert cycles(engine) == []


def test_the_old_names_stay_importable_from_the_sweep():
    from petseg_bench.engine import sweep

    for name in ("SweepPlan", "SweepJob", "SweepSource", "SweepData", "GroupResult", "LocalBackend", "RUN_FOLDERS",
                 "RESUME_KEYS", "parse_levels", "applies", "run_sweep", "compute_cells", "compute_group", "run_group",
                 "load_sweep_data", "loaded_models", "runtime_facts", "model_info", "open_backend", "cells_left",
                 "base_record", "merge_resume", "record_dirs", "write_cell"):
        assert hasattr(sweep, name), name

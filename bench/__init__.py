"""The iast-ssh benchmark suite: ``python -m bench [NAME ...] [--quick] [--profile]``.

Each scenario is one module with ``NAME`` and ``run(quick, profile, results_dir) -> Outcome``;
every figure is judged against a baseline measured in the same run (see
bench/README.md for what each one measures and why).
"""

from __future__ import annotations

# In the order they run: the cheap in-process figure first, the disk-heavy one last.
SCENARIOS = {
    "pipeline": "bench.pipeline",
    "pipeline-pg": "bench.pipeline_pg",
    "login-fresh": "bench.login_fresh",
    "login-kept": "bench.login_kept",
    "replicas": "bench.replicas",
    "multi-core": "bench.multi_core",
    "burst": "bench.burst",
    "client": "bench.client",
    "krl-scale": "bench.krl_scale",
    "audit-scale": "bench.audit_scale",
}

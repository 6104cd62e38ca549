"""Entry points: CLI, workload spec, cluster bootstrap, runner, tracing/metrics, views."""

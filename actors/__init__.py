"""What runs on the nodes: model segments (actors.models), the plain EdgeDevice/Server/Policy
classes, their thin Ray shells (actors.ray_actors, the only module that calls ray.remote)
and per-process telemetry (actors.telemetry)."""

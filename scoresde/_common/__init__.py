"""Plumbing shared by every layer: the registry, tensor helpers, argument validation, finite checks,
atomic files, TOML, thread and process-group policy, and the RK45 integrator. Imports nothing of ours."""

"""Training: losses, the config, tasks, and the engine that runs them into a run directory."""

"""Run directories: the checkpoint format, the directory's lock and log, loading a trained model,
stored step grids, and the figures a run writes."""

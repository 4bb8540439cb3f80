"""The tasks of the training engine (the interface and registry are in `base`); importing this
package registers "score", "masked", "autoregressive", "autoencoder" and "latent"."""
from .base import TASKS, Task, get_task
from . import score, masked, vae, latent  # noqa: F401  (they register themselves in TASKS)

__all__ = ["TASKS", "Task", "get_task"]

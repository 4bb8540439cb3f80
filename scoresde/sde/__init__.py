"""Forward processes: the SDE interface, VP / sub-VP / VE, the alpha-bar (discrete-time) schedules, the
masking process of token diffusion, and data with exact perturbed scores (`analytic`)."""
from .base import SDE, ReverseSDE, SDES, get_sde
from .linear import VPSDE, SubVPSDE, VESDE, FlowSDE, EDMSDE
from .alpha_bar import DiscreteVPSDE, CosineVPSDE
from .analytic import Gaussian, GaussianMixture

__all__ = ["SDE", "ReverseSDE", "SDES", "get_sde", "VPSDE", "SubVPSDE", "VESDE", "FlowSDE", "EDMSDE", "DiscreteVPSDE", "CosineVPSDE",
           "Gaussian", "GaussianMixture"]

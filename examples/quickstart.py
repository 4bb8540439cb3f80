"""Sample the built-in four-mode 2-D mixture with its exact score by reverse diffusion.

A minimal, self-contained tour of the SDE interface: the reverse-time SDE's discretisation
x_{i-1} = x_i - f_rev + G z (Song et al. 2021, eq. 45) run from the prior to t ~ 0.
"""
import torch

import scoresde as ss
from scoresde.sde.analytic import four_mode_mixture, mode_stats

torch.manual_seed(0)
sde = ss.VPSDE(N=500)
data = four_mode_mixture()
rsde = sde.reverse(data.score_fn(sde))
x = sde.prior_sampling((4000, 2), dtype=torch.float64)
for t in torch.linspace(sde.T, 1e-3, sde.N, dtype=torch.float64):
    f, G = rsde.discretize(x, t)
    x = x - f + G[:, None] * torch.randn_like(x)
tv, std_err = mode_stats(data, x)
print(f"{sde}: 4000 samples, mode-weight TV {tv:.3f}, within-mode std error {100 * std_err:.1f}%")

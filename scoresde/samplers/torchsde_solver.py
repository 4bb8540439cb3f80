"""The reverse-time SDE solved by torchsde's `sdeint`.

Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential Equations",
arXiv:2011.13456, eq. 6: dx = [f(x, t) - g(t)^2 s(x, t)] dt + g(t) dw-bar, t from T down to eps.
torchsde (Li et al. 2020, arXiv:2001.01328; Kidger et al. 2021, arXiv:2105.13493) integrates
forwards in time, so the solver sees s = T - t:
    dx = -[f(x, T - s) - g(T - s)^2 score(x, T - s)] ds + g(T - s) dW_s,   s in [0, T - eps],
on the flattened state (B, prod(D)) with diagonal noise. The diffusion does not depend on x
(additive noise), so Ito and Stratonovich forms coincide and the Stratonovich solvers apply too.
"""
from __future__ import annotations

import torch

from scoresde._common.validation import check_choice, check_positive
from scoresde.samplers.core import SAMPLERS, check_options
from scoresde.samplers.ode import TimeBar
from scoresde.samplers.predictors import euler_maruyama_step, one_per_step


__all__ = ["torchsde_sampler", "TORCHSDE_METHODS"]

# method -> the SDE type torchsde expects of it; all are valid here as the noise is additive
TORCHSDE_METHODS = {"euler": "ito", "milstein": "ito", "srk": "ito", "reversible_heun": "stratonovich",
                    "heun": "stratonovich", "midpoint": "stratonovich", "euler_heun": "stratonovich"}


class _ReverseInS:
    """torchsde's view of the reverse SDE in s = T - t: f(s, y), g(s, y) on y of shape (B, prod(D))."""

    noise_type = "diagonal"

    def __init__(self, sde, score_fn, shape: tuple[int, ...], sde_type: str, T: float, bar: TimeBar):
        self.reverse, self.forward, self.shape = sde.reverse(score_fn), sde, shape
        self.T, self.sde_type, self.bar = T, sde_type, bar      # T: the grid's first time (sde.T by default)

        self._last = None        # (s, y, f): sdeint's shape check and first step share f(0, y0)

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = float(s)             # host times: no device sync
        self.bar.update(self.T - s)                 # the bar shows the reverse time t = T - s
        if self._last is not None and self._last[0] == s and self._last[1] is y:
            return self._last[2]
        # dx/ds = -[f(x, t) - g(t)^2 score(x, t)],  t = T - s
        drift, _ = self.reverse.sde(y.reshape(self.shape), self.T - s)
        self._last = (s, y, -drift.reshape(y.shape))
        return self._last[2]

    def g(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, g = self.forward.sde(y.reshape(self.shape), self.T - float(s))    # (B,)
        return g[:, None].expand(y.shape)


def _torchsde_nfe(steps: int, denoise: bool = True, method: str = "euler", **options) -> int | None:
    """steps for the one-evaluation methods (euler, milstein) on the default dt; else the solver's (None)."""
    return one_per_step(steps) if method in ("euler", "milstein") and "dt" not in options else None


@SAMPLERS.register("torchsde", kind="sde", summary="reverse SDE solved by torchsde.sdeint (method= euler, milstein, "
                   "srk, ...)", nfe=_torchsde_nfe, stochastic=True, takes_grid=False,
                   options={"method": "euler", "dt": None})           # dt: (T - eps) / steps
def torchsde_sampler(sde, score_fn, x, ts, *, generator=None, denoise=True, progress=False, **options):
    """Reverse SDE solved by `torchsde.sdeint` with a fixed step.

    Options: method="euler" (also "milstein", "srk", "reversible_heun", "heun", "midpoint",
    "euler_heun"), dt=(T - eps) / steps, with T and eps the grid's first and last times. The Brownian
    motion is a `torchsde.BrownianInterval` seeded from `generator`. NFE is the solver's (euler,
    milstein: one per step, as declared; srk, heun, midpoint: more).
    With `denoise` the final step of length dt is a noise-free Euler step (one NFE), as in the
    other SDE samplers. `progress` shows a bar over time, advanced from the drift's evaluations.
    "reversible_heun" has a small stability region: with sharp data (mode std 0.1) the drift near
    t = eps is stiff and it diverges at 1000 steps (benchmarks/reference_samplers.py); prefer "euler".
    """
    import torchsde

    T, eps = ts[[0, -1]].double().tolist()          # one host read before solving: first and last time
    opts = check_options("torchsde", options, {"method": "euler", "dt": (T - eps) / (len(ts) - 1)})
    method = check_choice("method", opts["method"], TORCHSDE_METHODS)
    dt = check_positive("dt", opts["dt"])
    if dt > T - eps:
        raise ValueError(f"dt: expected a step no longer than T - eps = {T - eps}, found {dt}")
    B, shape = x.shape[0], tuple(x.shape)
    s_end = (T - eps) - (dt if denoise else 0.0)     # the noise-free last step covers [T-eps-dt, T-eps]
    if s_end <= 1e-12 * T:                           # nothing left for the solver
        s_end = 0.0
    y = x.reshape(B, -1)
    if s_end > 0:
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device
                                 if generator is not None else "cpu").item())
        levy = "space-time" if method == "srk" else "none"
        bm = torchsde.BrownianInterval(t0=0.0, t1=s_end, size=y.shape, dtype=y.dtype, device=y.device,
                                       entropy=seed, levy_area_approximation=levy)
        solver_options = {"grad_free": True} if method == "milstein" else None
        # host float64 times (the solver loop compares them each step); dt padded by 1e-9 so that
        # accumulated round-off cannot add a sliver of a step at the end (the last step is clipped)
        s_grid = torch.tensor([0.0, s_end], dtype=torch.float64)
        bar = TimeBar(T, eps, progress, desc="torchsde")
        try:
            y = torchsde.sdeint(_ReverseInS(sde, score_fn, shape, TORCHSDE_METHODS[method], T, bar), y, s_grid,
                                bm=bm, method=method, dt=dt * (1 + 1e-9), adaptive=False,
                                options=solver_options)[-1]
        finally:
            bar.close()
    x = y.reshape(shape)
    if denoise:
        t_last = torch.full((B,), T - s_end, device=x.device, dtype=x.dtype)
        x = euler_maruyama_step(sde, score_fn, x, t_last, torch.full_like(t_last, eps), noise=False)
    return x

"""Exact log-likelihoods through the probability-flow ODE, and bits/dim.

Song et al. (2021), "Score-Based Generative Modeling through Stochastic Differential Equations",
arXiv:2011.13456, Appendix D.2: the probability-flow ODE dx/dt = f~(x, t) = f(x, t) - 1/2 g(t)^2 s(x, t)
is a continuous normalising flow (Chen et al. 2018, "Neural Ordinary Differential Equations",
arXiv:1806.07366), so by the instantaneous change of variables

    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div_x f~(x(t), t) dt.

The state [x, delta_logp] is solved as one tensor from t = eps to T with the on-device Dormand-Prince
solver (`scoresde.odeint`). The divergence is exact (autograd, one vector-Jacobian product per data
dimension) or Hutchinson's estimate eps^T (df~/dx) eps with one fixed Rademacher or Gaussian probe per
solve (Grathwohl et al. 2019, "FFJORD", arXiv:1810.01367), as score_sde does.

What is computed is log p_eps, the density of the data perturbed to time eps, not log p_0: the ODE
is singular at t = 0. For VP/sub-VP with eps = 1e-5 the two agree to far below solver tolerance; for
VE the kernel at eps has std sigma(eps) ~ sigma_min (0.01 by default), which is *not* negligible
against fine structure in the data (e.g. modes of std 0.1), so compare with the perturbed density
at eps. Bits/dim for 8-bit data (`bits_per_dim`) adds the uniform-dequantisation offset.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from scoresde._common.finite import CheckedScore, NonFiniteError, nonfinite_count
from scoresde._common.odeint import odeint_rk45
from scoresde._common.validation import check_choice, check_int, check_real
from scoresde._common.threads import thread_policy


__all__ = ["log_likelihood", "bits_per_dim", "dequantize", "dataset_likelihood",
           "exact_divergence", "hutchinson_divergence", "DIVERGENCES", "PROBES"]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
_EXACT_CHUNK_ELEMS = 2 ** 24     # basis vectors per batched vjp: keep chunk * B * D below this


# --- divergence estimators -------------------------------------------------------------------
def exact_divergence(fx: torch.Tensor, x: torch.Tensor, *, batched: bool = True) -> torch.Tensor:
    """sum_i d fx_i / d x_i per sample, (B,): one vjp per data dimension with the basis vectors e_i.

    `fx` must be computed from `x` (which requires grad), sample by sample. With `batched` the vjps
    run in chunks through autograd's vmap (`is_grads_batched`); where an operation does not support
    that, or with `batched=False`, they run one at a time.
    """
    B, D = x.shape[0], x[0].numel()
    flat = fx.reshape(B, D)
    if batched:
        eye = torch.eye(D, device=x.device, dtype=x.dtype)
        chunk = max(1, min(D, _EXACT_CHUNK_ELEMS // max(1, B * D)))
        div = torch.zeros(B, device=x.device, dtype=x.dtype)
        try:
            for lo in range(0, D, chunk):
                e = eye[lo:lo + chunk, None, :].expand(-1, B, D)              # (c, B, D)
                (jt,) = torch.autograd.grad(flat, x, e, retain_graph=True, is_grads_batched=True)
                # row k of jt is e_k^T J (c, B, D): its k-th entry is the diagonal dF_k / dx_k
                div = div + jt.reshape(-1, B, D)[:, :, lo:lo + chunk].diagonal(dim1=0, dim2=2).sum(-1)
            return div
        except RuntimeError:                                                   # no vmap support
            pass
    div = torch.zeros(B, device=x.device, dtype=x.dtype)
    for i in range(D):
        (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)    # e_i^T J, summed over B
        div = div + g.reshape(B, D)[:, i]
    return div


def hutchinson_divergence(fx: torch.Tensor, x: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """Hutchinson's unbiased estimate eps^T (dfx/dx) eps per sample, (B,), for a probe eps like x
    with E[eps eps^T] = I (Hutchinson 1990; Grathwohl et al. 2019)."""
    (vjp,) = torch.autograd.grad(fx, x, probe, retain_graph=False)          # eps^T J, like x
    return (vjp * probe).flatten(1).sum(1)


def _draw_probe(x: torch.Tensor, probe: str, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else x.device
    if probe == "gaussian":
        v = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    else:                                                                     # rademacher: +-1
        v = torch.randint(0, 2, x.shape, generator=generator, device=device).to(x.dtype) * 2 - 1
    return v.to(x.device)


# --- validation ------------------------------------------------------------------------------
def _check_data(x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor of shape (B, *D), found {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] == 0 or x[0].numel() == 0 or not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor of shape (B, *D) with B >= 1 and at least "
                         f"one data dimension, found dtype {x.dtype} and shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x: expected finite values, found NaN or inf")
    return x




# --- log-likelihood ----------------------------------------------------------------------------
def log_likelihood(sde, score_fn: Callable, x: torch.Tensor, *, divergence: str = "exact",
                   probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5,
                   generator: torch.Generator | None = None, return_info: bool = False,
                   max_steps: int = 100_000, callback: Callable[[float], None] | None = None):
    """log p_eps(x) in nats, (B,), by the probability-flow ODE (Song et al. 2021, App. D.2).

    Args:
        sde: the forward SDE the score belongs to.
        score_fn: callable score_fn(x, t) -> grad_x log p_t(x) shaped like x; it must be
            differentiable in x and act on each sample independently.
        x: data (B, *D) of any rank, floating point; the solve runs on its device and dtype.
        divergence: "exact" (autograd, D vjps per evaluation; for small D) or "hutchinson"
            (one vjp per evaluation; unbiased estimate of log p, for images).
        probe: Hutchinson probe distribution, "rademacher" (+-1) or "gaussian"; one probe is drawn
            per solve (from `generator`) and held fixed along the ODE, as in score_sde.
        rtol, atol: tolerances of the adaptive RK45 solve of the augmented state [x, delta_logp].
        eps: start time of the ODE, in (0, T). The result is the density of the data perturbed
            to time eps, log p_eps(x), which is what the ODE from eps computes: for VE,
            sigma(eps) ~ sigma_min is not negligible against fine data structure.
        generator: source of the Hutchinson probe.
        return_info: also return {"nfe", "steps", "rejected", "seconds", "z" (x(T), like x),
            "prior_logp", "delta_logp"} (nfe = score evaluations, as `sample(..., return_info=True)`).
        max_steps: ODE step budget (RuntimeError beyond it).
        callback: called with the time t of every evaluation of the ODE (eps -> T), e.g. to
            advance a progress bar.
    Returns:
        logp (B,) in x's dtype, or (logp, info) with `return_info`.

    Gradients are taken internally even under `torch.no_grad()`; the result carries no graph.
    Besides the solver error, the result carries the prior mismatch log p_T(z) - log pi(z) (the
    data's p_T is not exactly the prior); with the default SDEs it is ~1e-3 nats in 2-D.

    The first score evaluation is checked (shaped like x, its dtype, finite) and NaN/inf in a
    score, the state or the divergence raise `NonFiniteError` (a ValueError) within a step.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn: expected a callable score_fn(x, t), found {type(score_fn).__name__}")
    x = _check_data(x)
    check_choice("divergence", divergence, DIVERGENCES)
    check_choice("probe", probe, PROBES)
    rtol = check_real("rtol", rtol, 0.0, 1.0, interval="()")
    atol = check_real("atol", atol, 0.0, 1.0, interval="()")
    eps = check_real("eps", eps, 0.0, float(sde.T), interval="()")
    max_steps = check_int("max_steps", max_steps)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, found {type(generator).__name__}")

    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable callback(t) or None, found {type(callback).__name__}")

    shape, B, D = x.shape, x.shape[0], x[0].numel()
    checked = CheckedScore(score_fn, where="log_likelihood")
    flow = sde.reverse(checked, probability_flow=True)
    v = _draw_probe(x, probe, generator) if divergence == "hutchinson" else None
    nfe = 0

    def f(t: float, y: torch.Tensor) -> torch.Tensor:
        nonlocal nfe
        nfe += 1
        if callback is not None:
            callback(t)
        with torch.inference_mode(False), torch.enable_grad():    # grads even under no_grad/inference
            xt = y[:, :D].reshape(shape).clone().requires_grad_(True)
            # dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t)    (probability-flow ODE, Song et al. eq. 13)
            drift, _ = flow.sde(xt, t)
            # d(delta_logp)/dt = div_x f~(x, t)    (instantaneous change of variables, Chen et al. 2018)
            div = exact_divergence(drift, xt) if v is None else hutchinson_divergence(drift, xt, v)
        return torch.cat([drift.detach().reshape(B, D), div.detach()[:, None]], 1)        # (B, D + 1)

    start = time.perf_counter()
    y0 = torch.cat([x.detach().reshape(B, D), x.new_zeros(B, 1)], 1)
    with torch.no_grad(), thread_policy(shape[1:], x.device):
        try:
            y, stats = odeint_rk45(f, y0, eps, float(sde.T), rtol=rtol, atol=atol, max_steps=max_steps)
        except NonFiniteError:
            checked.flush()              # the score's own report (where it became NaN) when it has one
            raise
        checked.flush()
        z, delta_logp = y[:, :D].reshape(shape), y[:, D]
        prior_logp = sde.prior_logp(z)
        # log p_eps(x) = log p_T(z) + int_eps^T div f~ dt
        logp = prior_logp + delta_logp
        bad = nonfinite_count(logp)
        if bad:
            raise NonFiniteError(f"log_likelihood: {bad} of {B} log-likelihoods are NaN/inf (the prior log-density "
                                 "of the ODE's end point overflowed)")
    if not return_info:
        return logp
    info = {"nfe": nfe, "steps": stats["steps"], "rejected": stats["rejected"],
            "seconds": time.perf_counter() - start, "z": z, "prior_logp": prior_logp, "delta_logp": delta_logp}
    return logp, info


# --- bits/dim ----------------------------------------------------------------------------------
def _check_range(data_range: Any) -> tuple[float, float]:
    ok = isinstance(data_range, (tuple, list)) and len(data_range) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in data_range)
    if not ok or not data_range[0] < data_range[1]:
        raise ValueError(f"data_range: expected a pair (lo, hi) of finite numbers with lo < hi, found {data_range!r}")
    return float(data_range[0]), float(data_range[1])


def _levels(n_bits: Any, levels: Any) -> int | None:
    """Quantisation levels per dimension: `levels` when given (>= 2), else 2^n_bits, else None."""
    if levels is not None:
        return check_int("levels", levels, minimum=2)
    return None if n_bits is None else 2 ** check_int("n_bits", n_bits)


def bits_per_dim(logp: torch.Tensor, x: torch.Tensor | int, *, n_bits: int | None = 8,
                 data_range: tuple[float, float] = (0.0, 1.0), levels: int | None = None) -> torch.Tensor:
    """Convert log-densities (nats) of continuous data into bits per dimension, (B,).

    With `n_bits=None` this is the plain conversion bpd = -logp / (D ln 2).

    With `n_bits=n` the data are taken to be integers k in {0, ..., 2^n - 1} per dimension,
    dequantised uniformly, u = (k + U) / 2^n with U ~ U[0, 1) (u in [0, 1), cells of width 2^-n), and
    mapped affinely onto `data_range`, x = lo + s u with s = hi - lo (so (0, 1) for score_sde's
    default scaling, (-1, 1) for centred data). The discrete probability of k is bounded by
    log P(k) >= E_U[log p_x(x)] + D log(s / 2^n) (Jensen; p_x(x) s^D is the density of u and 2^-nD
    the volume of a cell), so the bits/dim of the discrete data are at most, in expectation over U,

        bpd = -logp / (D ln 2) + n - log2(s).

    For [0, 1] data the offset is 8 bits and for [-1, 1] data it is 7 (score_sde's
    `offset = 7 - inverse_scaler(-1)`). A uniform density on the range gives exactly n bits/dim.
    For L levels that are not a power of two (`levels=L`, e.g. 17 for scikit-learn's digits,
    0..16), n = log2(L).

    Args:
        logp: (B,) nats, e.g. from `log_likelihood` on dequantised data.
        x: the data (B, *D) (only its per-sample size D is used), or D as an int.
        n_bits: bits per dimension of the quantised data, or None for no offset.
        data_range: (lo, hi), the interval the 2^n levels were mapped onto.
        levels: number of levels L per dimension, instead of n_bits (overrides it).
    """
    if not isinstance(logp, torch.Tensor) or not logp.is_floating_point():
        raise TypeError(f"logp: expected a floating-point tensor of nats, found {type(logp).__name__}")
    if isinstance(x, torch.Tensor):
        if x.ndim < 2:
            raise ValueError(f"x: expected data of shape (B, *D), found shape {tuple(x.shape)}")
        D = x[0].numel()
    else:
        D = check_int("x", x)
    L = _levels(n_bits, levels)
    lo, hi = _check_range(data_range)
    bpd = -logp / (D * math.log(2))
    if L is not None:
        bpd = bpd + math.log2(L) - math.log2(hi - lo)
    return bpd


def dequantize(x: torch.Tensor, *, n_bits: int = 8, data_range: tuple[float, float] = (0.0, 1.0),
               levels: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation of data quantised to L = 2^n_bits (or `levels`) levels over `data_range`.

    Levels are read as k = round((x - lo) / s (L - 1)), s = hi - lo (ToTensor's k / 255 for
    [0, 1]), and replaced by lo + s (k + U) / L, U ~ U[0, 1): score_sde's (255 x + U) / 256.
    """
    x = _check_data(x)
    levels = _levels(n_bits, levels)
    lo, hi = _check_range(data_range)
    k = torch.round((x - lo) / (hi - lo) * (levels - 1)).clamp(0, levels - 1)
    device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    return lo + (hi - lo) * (k + u) / levels


# --- whole data sets -------------------------------------------------------------------------------
def _model_device_dtype(score_model: Any, data: torch.Tensor):
    params = getattr(score_model, "parameters", None)
    p = next(iter(params()), None) if callable(params) else None
    if p is None or not p.is_floating_point():
        return data.device, data.dtype
    return p.device, p.dtype


class _ExampleBar:
    """A tqdm bar over the examples that moves within a batch: a batch of n examples starting at
    `lo` counts as lo + n (t - eps) / (T - eps) done while its ODE is at time t. The count shown is of
    the examples whose solve has finished ("95%|...| [00:03<00:00, 0/8 examples done]" while one batch of 8
    runs; tqdm puts ", " before a postfix, so it goes after the times)."""

    def __init__(self, total: int, eps: float, T: float):
        from tqdm.auto import tqdm
        self.eps, self.span, self.total, self.finished = eps, T - eps, total, 0
        self.bar = tqdm(total=total, desc="likelihood", leave=False, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]")
        self._count()

    def _count(self) -> None:
        self.bar.set_postfix_str(f"{self.finished}/{self.total} examples done", refresh=False)

    def batch(self, lo: int, n: int) -> Callable[[float], None]:
        self.finished = lo
        self._count()

        def advance(t: float) -> None:
            done = lo + n * min(1.0, max(0.0, (float(t) - self.eps) / self.span))
            if done > self.bar.n:
                self.bar.update(done - self.bar.n)
        return advance

    def close(self) -> None:
        self.finished = min(self.total, int(round(self.bar.n)))
        self._count()
        self.bar.close()


def dataset_likelihood(score_model: Callable, sde, data: torch.Tensor, batch_size: int = 256, *,
                       divergence: str = "hutchinson", probe: str = "rademacher", rtol: float = 1e-5,
                       atol: float = 1e-5, eps: float = 1e-5, n_bits: int | None = None,
                       levels: int | None = None, data_range: tuple[float, float] = (0.0, 1.0),
                       dequantize_data: bool = True,
                       generator: torch.Generator | None = None, device: Any = None,
                       progress: bool = False) -> dict[str, Any]:
    """Per-sample log-likelihoods and bits/dim of a data set, batch by batch (the `scoresde
    likelihood` command's library function).

    Args:
        score_model: score_fn(x, t); an `nn.Module` is evaluated in eval mode (restored after) on
            its parameters' device and dtype.
        sde: the SDE the model was trained with.
        data: (N, *D) tensor, already scaled as the model saw it in training.
        batch_size: samples per ODE solve.
        divergence, probe, rtol, atol, eps: as in `log_likelihood`; Hutchinson by default, as
            score_sde evaluates image likelihoods (pass "exact" for low-dimensional data).
        n_bits: bit depth of quantised data (8 for 8-bit images): the data are dequantised
            uniformly (when `dequantize_data`) and bits/dim carry the offset of `bits_per_dim`.
            None: continuous data, plain bits/dim.
        levels: number of quantisation levels instead of n_bits (17 for the `digits` data, 0..16).
        data_range: (lo, hi) the levels were mapped onto, e.g. (0, 1) or (-1, 1).
        generator: source of the dequantisation noise and Hutchinson probes.
        device: where to solve (default: the model's device, else the data's).
        progress: show a progress bar over batches.
    Returns:
        {"nats": (N,) log p_eps per sample, "bpd": (N,) bits/dim, "mean_nats", "mean_bpd",
        "stderr_bpd" (standard error over samples), "nfe" (total score evaluations), "seconds"}.
    """
    if not callable(score_model):
        raise TypeError(f"score_model: expected a callable score_fn(x, t), found {type(score_model).__name__}")
    data = _check_data(data)
    batch_size = check_int("batch_size", batch_size)
    L = _levels(n_bits, levels)
    data_range = _check_range(data_range)
    dev, dtype = _model_device_dtype(score_model, data)
    dev = dev if device is None else torch.device(device)
    module = score_model if isinstance(score_model, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    nats, nfe, start = [], 0, time.perf_counter()
    bar = _ExampleBar(data.shape[0], eps, float(sde.T)) if progress else None
    try:
        with thread_policy(data.shape[1:], dev):
            for lo in range(0, data.shape[0], batch_size):
                x = data[lo:lo + batch_size].to(device=dev, dtype=dtype)
                if L is not None and dequantize_data:
                    x = dequantize(x, levels=L, data_range=data_range, generator=generator)
                logp, info = log_likelihood(sde, score_model, x, divergence=divergence, probe=probe, rtol=rtol,
                                            atol=atol, eps=eps, generator=generator, return_info=True,
                                            callback=bar.batch(lo, x.shape[0]) if bar else None)
                nats.append(logp.cpu())
                nfe += info["nfe"]
    finally:
        if bar is not None:
            bar.close()
        if module is not None:
            module.train(was_training)
    nats = torch.cat(nats)
    bpd = bits_per_dim(nats, data[0].numel(), n_bits=None, levels=L, data_range=data_range)
    stderr = bpd.std() / math.sqrt(len(bpd)) if len(bpd) > 1 else torch.tensor(float("nan"))
    return {"nats": nats, "bpd": bpd, "mean_nats": nats.mean().item(), "mean_bpd": bpd.mean().item(),
            "stderr_bpd": float(stderr), "nfe": nfe, "seconds": time.perf_counter() - start}

"""Score / noise / data parameterisations and the `ScoreModel` wrapper.

For a linear SDE the perturbation kernel is x_t = alpha(t) x_0 + sigma(t) z, whose score is
grad log p_0t(x_t | x_0) = -z / sigma(t). Denoising score matching therefore makes the optimal
noise predictor eps*(x_t, t) = E[z | x_t] = -sigma(t) grad log p_t(x_t) (Tweedie's formula), which
is why DDPM's epsilon-prediction (Ho et al. 2020, arXiv:2006.11239) is score matching
(Song et al. 2021, "Score-Based Generative Modeling through SDEs", arXiv:2011.13456, App. B/C;
Vincent 2011). See docs/concepts/ddpm-is-dsm.md.

Conversions used below, all per sample with alpha = alpha(t), sigma = sigma(t):
    score = -eps / sigma                      eps   = -sigma * score
    x0    = (x + sigma^2 score) / alpha       score = (alpha x0 - x) / sigma^2
and for the velocity v = alpha eps - sigma x0 (Salimans & Ho 2022, arXiv:2202.00512, App. D),
with r = alpha^2 + sigma^2 (1 for VP SDEs):
    x0    = (alpha x - sigma v) / r           eps   = (sigma x + alpha v) / r
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from scoresde._common.tensors import append_dims, as_time
from scoresde._common.validation import check_choice, check_fn
from scoresde.sde.base import check_sde
from scoresde.models.conditioning import Cond, as_cond
from scoresde.models.preconditioners import NOISE_INPUTS, PRECONDITIONERS, T_SCALE, Preconditioner
from scoresde.models.superres import augment_by_sde, check_level


__all__ = ["score_from_eps", "eps_from_score", "ScoreModel", "PARAMETERIZATIONS", "CONDITIONINGS", "conditioning_value",
           "T_SCALE"]

PARAMETERIZATIONS = tuple(PRECONDITIONERS)            # "eps", "score", "x0", "v", "flow", "edm"
OUTPUTS = ("score", "eps", "x0", "v", "u")            # what `ScoreModel(x, t, output=...)` returns
CONDITIONINGS = ("auto", *NOISE_INPUTS)               # "t", "log_sigma", "sigma", "timestep", "edm"


def conditioning_value(kind: str, sde: Any, t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The (B,) value c a network is fed for conditioning `kind` (a name of `NOISE_INPUTS`)."""
    return NOISE_INPUTS[kind](sde, t, sigma)




class _Converted:
    """A score <-> eps conversion of a callable; keeps the wrapped callable's `data_shape`."""

    def __init__(self, fn: Callable, sde: Any, to: str):
        self.fn, self.sde, self.to = fn, sde, to

    @property
    def data_shape(self):
        return getattr(self.fn, "data_shape", None)

    def __call__(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        t = as_time(t, x)
        _, sigma = self.sde.marginal_coefs(t)
        sigma = append_dims(sigma, x.ndim)
        out = self.fn(x, t)
        # score = -eps / sigma ;  eps = -sigma * score
        return -out / sigma if self.to == "score" else -sigma * out

    def __repr__(self) -> str:
        src = "eps" if self.to == "score" else "score"
        return f"{self.to}_from_{src}({self.fn!r}, {self.sde!r})"


def score_from_eps(eps_fn: Callable, sde: Any) -> Callable:
    """Score function score(x, t) = -eps_fn(x, t) / sigma(t) of a noise predictor."""
    return _Converted(check_fn(eps_fn, "eps_fn"), check_sde(sde), "score")


def eps_from_score(score_fn: Callable, sde: Any) -> Callable:
    """Noise predictor eps(x, t) = -sigma(t) score_fn(x, t) of a score function."""
    return _Converted(check_fn(score_fn, "score_fn"), check_sde(sde), "eps")


class ScoreModel(nn.Module):
    """Turn a network `net(x, c)` predicting eps, the score or x0 into a score function.

    Args:
        net: nn.Module (or callable) with forward(x, c), x of shape (B, *D) and c a (B,) float
            conditioning value; its output is shaped like x. Its `data_shape` attribute, if any,
            is exposed as `.data_shape` (so samplers accept a batch size alone).
        sde: the SDE whose kernel x_t = alpha(t) x0 + sigma(t) z the network was trained on.
        parameterization: what the network predicts, a name of `PRECONDITIONERS` or a
            `Preconditioner` (scoresde/models/preconditioners.py, where each is a few lines):
            "eps":   the noise z;            score = -net / sigma
            "score": the score;              score = net / sigma if `scale_by_sigma`, else net
            "x0":    the clean data;         score = (alpha net - x) / sigma^2
            "v":     the velocity alpha eps - sigma x0;  eps = (sigma x + alpha net) / (alpha^2 + sigma^2)
            "flow":  rectified flow's velocity u = z - x0;  x0 = (x - sigma net) / (alpha + sigma)
            "edm":   EDM's preconditioned F (Karras et al. 2022), sigma_data = 0.5
        conditioning: what the network is fed as c: "t" -> 999 t (DDPM's timestep scale, suits
            sinusoidal embeddings), "log_sigma" -> log sigma(t) (NCSN++ VE convention),
            "sigma" -> sigma(t), "timestep" -> `sde.timestep(t)` (the discrete timestep scale of an
            SDE built from a discrete schedule, e.g. `DiscreteVPSDE`), "auto" ->
            `sde.default_conditioning` ("t" for VP / sub-VP, "log_sigma" for VE).
        scale_by_sigma: only for "score": divide the output by sigma(t) (NCSN++). Default: on when
            the SDE's default conditioning is "log_sigma" (VE), off otherwise.

    Calling the model, `model(x, t)` with t a float or (B,) tensor, returns the score; `.eps(x, t)`,
    `.x0(x, t)` (the denoiser D) and `.v(x, t)` the noise, data and velocity predictions, all derived
    by the preconditioner (`.precond`) from one network call. A conditional network (forward(x, c, cond))
    takes its condition as a `Cond`: `model(x, t, Cond(labels=labels))` for one built with
    `num_classes=K`, labels (B,) long in [0, K] with K the null label; `cond=None` is the null label
    (unconditional score); a batch-1 Cond is broadcast to the batch of x. Class labels where the
    condition goes, `model(x, t, labels)` or the former `model(x, t, y=labels)` (an int or a (B,)
    tensor), are `Cond(labels=labels)`. `.num_classes` is the network's K (None when unconditional).

    A super-resolution model (a network built with `image_shape`) takes its low-resolution input as
    `Cond(image=..., image_level=s)`, best made by `model.image_cond(low_res, s)` (noise-conditioning augmentation
    by the model's SDE at the time s, `augment`); `call_net` maps s to the network's conditioning value as t.

    A text-conditional model (a network built with `context_dim`) carries its `text_encoder` (a
    `scoresde.models.text.TextEncoder`, None by default; a submodule, so a jointly trained encoder is
    saved, averaged and moved with the model): prompts where the condition goes, `model(x, t, "a prompt")`
    or a list of B prompts, are encoded by it into the Cond of their context.
    """

    def __init__(self, net: Callable, sde: Any, parameterization: str = "eps", conditioning: str = "auto",
                 scale_by_sigma: bool | None = None, *, text_encoder: nn.Module | None = None):
        super().__init__()
        if not callable(net):
            raise TypeError(f"net: expected an nn.Module (or callable) net(x, c), found {type(net).__name__}")
        self.net = net
        self.sde = check_sde(sde)
        if isinstance(parameterization, Preconditioner):
            precond, parameterization = parameterization, parameterization.name
        elif not isinstance(parameterization, str):
            raise TypeError(f"parameterization: expected one of {list(PARAMETERIZATIONS)} or a Preconditioner, "
                            f"found {type(parameterization).__name__}")
        else:
            precond = None
        if not isinstance(conditioning, str):
            raise TypeError(f"conditioning: expected one of {list(CONDITIONINGS)}, found {type(conditioning).__name__}")
        self.parameterization = check_choice("parameterization", parameterization, PARAMETERIZATIONS)
        check_choice("conditioning", conditioning, CONDITIONINGS)
        sde_default = getattr(sde, "default_conditioning", "t")
        if conditioning == "auto":
            conditioning = sde_default
            check_choice("sde.default_conditioning", conditioning, CONDITIONINGS[1:])
        if conditioning == "timestep" and not callable(getattr(sde, "timestep", None)):
            raise ValueError(f"conditioning: 'timestep' needs an SDE with a discrete timestep scale "
                             f"(a `timestep(t)` method, e.g. DiscreteVPSDE), found {type(sde).__name__}")
        self.conditioning = conditioning
        self.noise_input = NOISE_INPUTS[conditioning]
        if scale_by_sigma is None:
            scale_by_sigma = (precond.scale_by_sigma if precond is not None and parameterization == "score"
                              else parameterization == "score" and sde_default == "log_sigma")
        if not isinstance(scale_by_sigma, bool):
            raise TypeError(f"scale_by_sigma: expected a bool or None, found {type(scale_by_sigma).__name__}")
        if scale_by_sigma and parameterization != "score":
            raise ValueError(f"scale_by_sigma: only applies to parameterization='score', found "
                             f"parameterization={parameterization!r}")
        self.scale_by_sigma = scale_by_sigma
        if precond is None:
            precond = PRECONDITIONERS[parameterization](**({"scale_by_sigma": scale_by_sigma}
                                                           if parameterization == "score" else {}))
        elif parameterization == "score" and precond.scale_by_sigma != scale_by_sigma:
            raise ValueError(f"scale_by_sigma: {scale_by_sigma} disagrees with the preconditioner's "
                             f"{precond.scale_by_sigma}")
        self.precond = precond
        if text_encoder is not None and not callable(getattr(text_encoder, "encode", None)):
            raise TypeError(f"text_encoder: expected a TextEncoder (with encode(prompts) -> Cond) or None, found "
                            f"{type(text_encoder).__name__}")
        self.text_encoder = text_encoder

    @property
    def data_shape(self) -> tuple[int, ...] | None:
        shape = getattr(self.net, "data_shape", None)
        return None if shape is None else tuple(shape)

    @property
    def num_classes(self) -> int | None:
        return getattr(self.net, "num_classes", None)

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """(C_i, h, w) of the image condition of a network built with `image_shape` (a super-resolution stage:
        cond.image is its low-resolution input), else None."""
        image_in = getattr(self.net, "image_in", None)
        return None if image_in is None else tuple(image_in.image_shape)

    # --- the image condition (super-resolution, cascades) -------------------------------------------------
    default_image_level = 0.0     # the augmentation level a super-resolution call uses unless told (the clean image)

    def check_image_level(self, level: Any, batch: int, like: torch.Tensor, name: str = "level") -> torch.Tensor:
        """(B,) augmentation levels from a number or a (B,) tensor: times s in [0, T] of this model's SDE (one
        clear error naming `name` otherwise). Wrappers whose level is something else (e.g. the SD x4 upscaler's
        integer noise_level) override it."""
        return check_level(level, batch, self.sde, like, name)

    def augment(self, image: torch.Tensor, level: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise-conditioning augmentation of an image condition (Cascaded Diffusion Models, arXiv:2106.15282):
        alpha(s) image + sigma(s) eps by this model's SDE at the level s (a time in [0, T]; a number or (B,)),
        rows at s = 0 unchanged. Wrappers of other libraries' models override it with their own process."""
        return augment_by_sde(self.sde, image, level, generator)

    def image_cond(self, image: torch.Tensor, level: Any = 0.0, *, generator: torch.Generator | None = None,
                   noisy: bool = False, labels: Any = None) -> Cond:
        """The Cond of a super-resolution call: cond.image = `image` (B, *image_shape) augmented to `level`
        (`augment`), or `image` itself when `noisy` (it is already at that level: the truncated cascade, whose
        previous chain stopped at s), cond.image_level = the level, and class `labels` riding along."""
        shape = self.image_shape
        if shape is None:
            raise ValueError("image: this model has no image condition (its network was built without image_shape)")
        if not isinstance(image, torch.Tensor) or not image.is_floating_point() or tuple(image.shape[1:]) != shape:
            found = f"{image.dtype} {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image: expected a (B, {', '.join(map(str, shape))}) floating-point low-resolution "
                             f"image, found {found}")
        if not isinstance(noisy, bool):
            raise TypeError(f"noisy: expected a bool, found {type(noisy).__name__}")
        s = self.check_image_level(level, image.shape[0], image)
        return Cond(image=image if noisy else self.augment(image, s, generator), image_level=s,
                    labels=None if labels is None else as_cond(labels).labels)

    def _image_level(self, cond: Cond) -> Cond:
        """cond with its image_level s (0 when unset) mapped to the network's conditioning value as t is."""
        x = cond.image
        s = cond.image_level if cond.image_level is not None else torch.zeros(x.shape[0], dtype=x.dtype,
                                                                              device=x.device)
        s = s.clamp_min(float(getattr(self.sde, "default_eps", 1e-5)))    # s = 0: the cleanest level sampled
        _, sigma = self.sde.marginal_coefs(s)
        return Cond(**{**dict(cond.items()), "image_level": self.condition(s, sigma)})

    def config(self) -> dict[str, Any]:
        """The wrapper's settings (resolved), for checkpoints."""
        extra = {k: v for k, v in self.precond.config().items() if k != "scale_by_sigma"}
        return {"parameterization": self.parameterization, "conditioning": self.conditioning,
                "scale_by_sigma": self.scale_by_sigma, **extra}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + f", sde={self.sde!r}"

    # --- the network call ---------------------------------------------------------------------
    def condition(self, t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The (B,) conditioning value c fed to the network."""
        return self.noise_input(self.sde, t, sigma)

    def call_net(self, x: torch.Tensor, c: torch.Tensor, cond: Cond | None = None) -> torch.Tensor:
        """The network's prediction at (x, c): `net(x, c)`, or `net(x, c, cond)` when conditional (cond a
        `Cond` broadcast to the batch of x; class labels become Cond(labels=...), see `as_cond`).
        Wrappers of other libraries' networks override this to adapt their call and output."""
        cond = as_cond(self.encode_prompts(cond))
        if cond is not None and cond.image is not None:
            cond = self._image_level(cond)
        if cond is None and self.text_encoder is not None:    # a text model's null condition: its encoder's
            cond = self.text_encoder.null(x.shape[0])
        # an unconditional net(x, c) is called without a condition; a conditional one gets cond (None = null)
        if cond is None and self.num_classes is None:
            return self.net(x, c)
        return self.net(x, c, None if cond is None else cond.expand(x.shape[0]))

    def encode_prompts(self, cond: Any) -> Any:
        """A prompt (str) or a list of prompts encoded by `text_encoder` into their Cond; any other condition as is."""
        prompts = isinstance(cond, str) or (isinstance(cond, (list, tuple)) and cond and
                                            all(isinstance(p, str) for p in cond))
        if not prompts:
            return cond
        if self.text_encoder is None:
            raise ValueError("cond: prompts need a text-conditional model (a text_encoder), found text_encoder=None")
        return self.text_encoder.encode([cond] if isinstance(cond, str) else list(cond))

    def _raw(self, x: torch.Tensor, t: Any, cond: Cond | None = None):
        """(network output, alpha, sigma) with alpha and sigma broadcast against x."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1:
            raise TypeError(f"x: expected a floating-point tensor (B, *D), found "
                            f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
        t = as_time(t, x)
        alpha, sigma = self.sde.marginal_coefs(t)
        a, s = append_dims(alpha, x.ndim), append_dims(sigma, x.ndim)
        out = self.call_net(self.precond.input(x, a, s), self.condition(t, sigma), cond)
        if getattr(self.net, "learn_sigma", False):   # [eps, v] (improved DDPM / DiT): v is no part of the score
            out = out[:, : x.shape[1]]
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"net: expected an output of shape {tuple(x.shape)} like x, found {found}")
        return out, a, s

    def forward(self, x: torch.Tensor, t: Any, cond: Any = None, *, y: Any = None,
                output: str = "score") -> torch.Tensor:
        """The score grad_x log p_t(x), shaped like x; or, with `output`, the prediction "eps", "x0", "v" or "u"
        (the methods of the same names) through the module's forward, as a training loss needs under DDP."""
        if output not in OUTPUTS:
            check_choice("output", output, OUTPUTS)
        out, alpha, sigma = self._raw(x, t, as_cond(self.encode_prompts(cond), y))
        return getattr(self.precond, output)(out, x, alpha, sigma)

    def eps(self, x: torch.Tensor, t: Any, cond: Any = None, *, y: Any = None) -> torch.Tensor:
        """The noise prediction eps(x, t) = E[z | x_t = x]."""
        out, alpha, sigma = self._raw(x, t, as_cond(self.encode_prompts(cond), y))
        return self.precond.eps(out, x, alpha, sigma)

    def x0(self, x: torch.Tensor, t: Any, cond: Any = None, *, y: Any = None) -> torch.Tensor:
        """The denoised prediction E[x_0 | x_t = x] (Tweedie's formula): EDM's denoiser D."""
        out, alpha, sigma = self._raw(x, t, as_cond(self.encode_prompts(cond), y))
        return self.precond.x0(out, x, alpha, sigma)

    denoiser = x0

    def v(self, x: torch.Tensor, t: Any, cond: Any = None, *, y: Any = None) -> torch.Tensor:
        """The velocity prediction alpha eps - sigma x0 (Salimans & Ho 2022)."""
        out, alpha, sigma = self._raw(x, t, as_cond(self.encode_prompts(cond), y))
        return self.precond.v(out, x, alpha, sigma)

    def u(self, x: torch.Tensor, t: Any, cond: Any = None, *, y: Any = None) -> torch.Tensor:
        """Rectified flow's velocity prediction u = E[z - x0 | x_t = x] (eps - x0)."""
        out, alpha, sigma = self._raw(x, t, as_cond(self.encode_prompts(cond), y))
        return self.precond.u(out, x, alpha, sigma)

"""Reference outputs of scoresde at commit 8c26e4f, pinned so that a restructuring of the package can be
shown to change no number (tests/test_pinned_outputs.py recomputes them with the same functions below).

Everything here goes through the public API only (`import scoresde as ss`, `ss.train`, `ss.load`), on the
CPU, with one thread and seeded `torch.Generator`s:

  samples     every registered sampler (`ss.list_samplers()`) under VP, sub-VP and VE on the exact score of
              a 2-D Gaussian mixture, float64, 8 points, 6 steps (30 for the samplers that follow the
              SDE's own discretisation), plus option and grid variants; and 4 samplers (16 points) on
              the trained model of tests/data/main_run, float32
  likelihood  `sde.log_likelihood` (exact and Hutchinson divergence) of the analytic score and the model
  losses      `ss.dsm_loss` (both weightings), `ss.ddpm_loss`, `ss.smld_loss` at fixed t / index / noise,
              and `ScoreModel` forwards (score, eps, x0) of every parameterization over a tiny seeded MLP
  resume      tests/data/main_run resumed for 20 more steps: every tensor and the metadata of its final
              checkpoint, the log.csv loss column, the final EMA samples (samples.npy)

Regenerate (only with the code the pins were made from, commit 8c26e4f):

    git worktree add /tmp/scoresde-8c26e4f 8c26e4f
    PYTHONPATH=/tmp/scoresde-8c26e4f python tests/data/pinned/make_pinned.py            # outputs.safetensors
    PYTHONPATH=/tmp/scoresde-8c26e4f python tests/data/pinned/make_pinned.py --main-run # also the run fixture

Run it as a script (as above): `python -m` / `python -c` put the current directory first on sys.path, so
from inside a checkout they would import that checkout's scoresde instead of PYTHONPATH's. The script
prints which scoresde it imported and records it in the file's metadata. `--main-run` rewrites
tests/data/main_run (a new run changes its log's wall-clock column; the pinned outputs depend on its
weights, so regenerate both together).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
import tempfile
import zlib

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import scoresde as ss

HERE = os.path.dirname(os.path.abspath(__file__))
MAIN_RUN = os.path.join(HERE, "..", "main_run")
OUTPUTS = os.path.join(HERE, "outputs.safetensors")

# The run fixture: the default job (2-D four-mode mixture, MLP, VP) made small.
MAIN_RUN_CONFIG = {
    "data": {"size": 2000},
    "model": {"width": 32, "depth": 2, "embed_dim": 16},
    "train": {"steps": 40, "batch_size": 64, "warmup": 10, "log_every": 5, "ckpt_every": 20, "progress": False},
    "sample": {"n": 64, "steps": 20},
    "device": "cpu",
}
MAIN_RUN_OUT = "/tmp/scoresde_main_run"        # where it is written (its config's `out`), then copied
RESUME_STEPS = 60                               # main_run (40 steps) resumed for 20 more
KEEP = ("config.toml", "log.csv", "metrics.json", "samples.npy", "checkpoints")   # no PNGs, no lock
# main_run's checkpoints are of format version 1 (tensor digests only): opened with the opt-in where the
# scoresde imported has it (the code of 8c26e4f, which regenerates the pins, has not)
UNVERIFIED = {"verify": False} if "verify" in inspect.signature(ss.load).parameters else {}

B, DIM, STEPS = 8, 2, 6
DISCRETE_STEPS = 30        # pc, reverse_diffusion, annealed_langevin step on the SDE's own discretisation:
DISCRETE = ("pc", "reverse_diffusion", "annealed_langevin")        # VP / sub-VP need beta_max / N < 1

# (name, sampler, steps, options): variants on VP beyond each sampler's defaults
VARIANTS = [
    ("pc_em_annealed", "pc", DISCRETE_STEPS, {"predictor": "euler_maruyama", "corrector": "annealed_langevin",
                                              "snr": 0.1, "corrector_steps": 2}),
    ("pc_ancestral_none", "pc", DISCRETE_STEPS, {"predictor": "ancestral", "corrector": "none"}),
    ("pc_none_langevin", "pc", DISCRETE_STEPS, {"predictor": "none", "corrector": "langevin"}),
    ("ddim_karras", "ddim", STEPS, {"schedule": "karras"}),
    ("ddim_uniform", "ddim", STEPS, {"schedule": "uniform"}),
    ("heun_logsnr", "heun", STEPS, {"schedule": "logsnr"}),
    ("dpm_solver_3", "dpm_solver", STEPS, {"order": 3}),
    ("dpm_solver_3_quadratic", "dpm_solver", STEPS, {"order": 3, "schedule": "quadratic", "lower_order_final": False}),
    ("deis_3_x0_corrector", "deis", STEPS, {"order": 3, "prediction": "x0", "corrector": True}),
    ("deis_1", "deis", STEPS, {"order": 1}),
    ("unipc_bh1_3", "unipc", STEPS, {"variant": "bh1", "order": 3}),
    ("unipc_no_corrector", "unipc", STEPS, {"corrector": False}),
    ("bns_karras", "bns", STEPS, {"schedule": "karras"}),
    ("ode_rk23_scipy", "ode", STEPS, {"method": "RK23", "rtol": 1e-3, "atol": 1e-3}),
    ("ode_loose", "ode", STEPS, {"rtol": 1e-3, "atol": 1e-3}),
    ("torchsde_midpoint", "torchsde", STEPS, {"method": "midpoint"}),
    ("torchsde_milstein", "torchsde", STEPS, {"method": "milstein"}),
]
# (name, sampler, keyword arguments of sde.sample): the grid and end-point arguments, on VP
GRID_VARIANTS = [
    ("euler_maruyama_no_denoise", "euler_maruyama", {"steps": STEPS, "denoise": False}),
    ("ddim_no_denoise", "ddim", {"steps": STEPS, "denoise": False}),
    ("dpm_solver_eps", "dpm_solver", {"steps": STEPS, "eps": 1e-2}),
    ("ddim_times", "ddim", {"times": [1.0, 0.7, 0.4, 0.2, 0.05, 0.01]}),
    ("ancestral_times", "ancestral", {"times": [1.0, 0.7, 0.4, 0.2, 0.05, 0.0]}),
    ("unipc_times", "unipc", {"times": [1.0, 0.6, 0.3, 0.1, 0.02]}),
]
MODEL_SAMPLERS = {"pc": DISCRETE_STEPS, "ddim": STEPS, "dpm_solver": STEPS, "euler_maruyama": 10}
PARAMETERIZATIONS = ("eps", "score", "x0", "v")


def seed_of(key: str) -> int:
    """A generator seed per pinned quantity, stable under reordering and additions."""
    return zlib.crc32(key.encode())


def gen(key: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed_of(key))


def sdes() -> dict[str, ss.SDE]:
    return {"vp": ss.VPSDE(), "subvp": ss.SubVPSDE(), "ve": ss.VESDE()}


def mixture() -> ss.GaussianMixture:
    return ss.GaussianMixture(torch.tensor([[-1.0, -0.5], [1.0, 0.5], [0.2, 1.2]]),
                              torch.tensor([[0.3, 0.2], [0.2, 0.4], [0.25, 0.25]]), [0.3, 0.5, 0.2])


def _sample(out, key, sde, score_fn, *, sampler, dtype=torch.float64, **kw):
    x, info = sde.sample(score_fn, (B, DIM), sampler=sampler, generator=gen(key), dtype=dtype, return_info=True, **kw)
    out[key] = x
    out["nfe/" + key] = torch.tensor(info["nfe"], dtype=torch.int64)


# --- the pinned quantities (each group a dict name -> tensor) -----------------------------------------------
def analytic_samples() -> dict[str, torch.Tensor]:
    """Every sampler under VP, sub-VP and VE, the VP variants, on the exact score, float64."""
    out, mix = {}, mixture()
    for sname, sde in sdes().items():
        for sampler in ss.list_samplers():
            steps = DISCRETE_STEPS if sampler in DISCRETE else STEPS
            _sample(out, f"sample/{sname}/{sampler}", sde, mix.score_fn(sde), sampler=sampler, steps=steps)
    sde = ss.VPSDE()
    for name, sampler, steps, options in VARIANTS:
        _sample(out, f"sample/vp/{name}", sde, mix.score_fn(sde), sampler=sampler, steps=steps, **options)
    for name, sampler, kw in GRID_VARIANTS:
        _sample(out, f"sample/vp/{name}", sde, mix.score_fn(sde), sampler=sampler, **kw)
    # a single Gaussian, and a start from a given x_init
    g = ss.Gaussian(torch.tensor([0.5, -1.0]), torch.tensor([0.3, 0.6]))
    _sample(out, "sample/vp/gaussian_dpm_solver", sde, g.score_fn(sde), sampler="dpm_solver", steps=STEPS)
    x_init = torch.randn(B, DIM, generator=gen("x_init"), dtype=torch.float64)
    out["sample/vp/x_init_euler_maruyama"] = sde.sample(mix.score_fn(sde), x_init=x_init, sampler="euler_maruyama",
                                                        steps=STEPS, generator=gen("sample/vp/x_init_euler_maruyama"))
    return out


def model_samples(run_dir: str) -> dict[str, torch.Tensor]:
    """Samples and forwards of the trained model of a run directory (EMA and raw weights), float32."""
    out = {}
    model, sde = ss.load(run_dir, **UNVERIFIED)
    for sampler, steps in MODEL_SAMPLERS.items():
        key = f"model_sample/{sampler}"
        x = sde.sample(model, 16, sampler=sampler, steps=steps, generator=gen(key), dtype=torch.float32)
        assert x.dtype == torch.float32
        out[key] = x
    x = torch.randn(B, DIM, generator=gen("model_forward/x"))
    t = torch.linspace(1e-3, 1.0, B)
    raw, _ = ss.load(run_dir, ema=False, **UNVERIFIED)
    with torch.no_grad():
        out["model_forward/ema/score"] = model(x, t)
        out["model_forward/ema/eps"] = model.eps(x, t)
        out["model_forward/ema/x0"] = model.x0(x, t)
        out["model_forward/raw/score"] = raw(x, t)
    for k, v in model.state_dict().items():
        out[f"model_weights/ema/{k}"] = v
    return out


def likelihoods(run_dir: str) -> dict[str, torch.Tensor]:
    """log p_eps(x) by the probability-flow ODE: exact and Hutchinson divergence, analytic score and model."""
    out, mix = {}, mixture()
    x = mix.sample(B, generator=gen("likelihood/x"))                       # float64
    for sname in ("vp", "ve"):
        sde = sdes()[sname]
        out[f"likelihood/{sname}/exact"] = sde.log_likelihood(mix.score_fn(sde), x, divergence="exact")
        key = f"likelihood/{sname}/hutchinson"
        out[key] = sde.log_likelihood(mix.score_fn(sde), x, divergence="hutchinson", generator=gen(key))
    sde = ss.VPSDE()
    key = "likelihood/vp/hutchinson_gaussian_loose"
    out[key] = sde.log_likelihood(mix.score_fn(sde), x, divergence="hutchinson", probe="gaussian", rtol=1e-3,
                                  atol=1e-3, eps=1e-3, generator=gen(key))
    model, sde = ss.load(run_dir, **UNVERIFIED)
    xf = x.float()
    out["likelihood/model/exact"] = sde.log_likelihood(model, xf, divergence="exact", rtol=1e-4, atol=1e-4)
    key = "likelihood/model/hutchinson"
    out[key] = sde.log_likelihood(model, xf, divergence="hutchinson", rtol=1e-4, atol=1e-4, generator=gen(key))
    return out


def tiny_net() -> torch.nn.Module:
    """A tiny MLP whose every parameter is drawn from a seeded generator (in name order; the MLP's output
    layer starts at zero, which would hide the parameterizations)."""
    torch.manual_seed(0)
    net = ss.get_model("mlp", data_shape=(DIM,), width=16, depth=1, embed_dim=8).double()
    g = gen("tiny_net")
    with torch.no_grad():
        for _, p in sorted(net.named_parameters()):
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def losses_and_forwards() -> dict[str, torch.Tensor]:
    """ScoreModel forwards of every parameterization and the losses at fixed t / index / noise, float64."""
    out, mix = {}, mixture()
    net = tiny_net()
    x0 = mix.sample(B, generator=gen("loss/x0"))
    noise = torch.randn(B, DIM, generator=gen("loss/noise"), dtype=torch.float64)
    t = torch.linspace(1e-3, 1.0, B, dtype=torch.float64)
    xt = torch.randn(B, DIM, generator=gen("forward/x"), dtype=torch.float64)
    with torch.no_grad():
        for sname in ("vp", "ve"):
            sde = sdes()[sname]
            for p in PARAMETERIZATIONS:
                model = ss.ScoreModel(net, sde, parameterization=p)
                k = f"{sname}/{p}"
                out[f"forward/{k}/score"] = model(xt, t)
                out[f"forward/{k}/eps"] = model.eps(xt, t)
                out[f"forward/{k}/x0"] = model.x0(xt, t)
                out[f"forward/{k}/score_t_float"] = model(xt, 0.3)
                out[f"dsm_loss/{k}"] = ss.dsm_loss(model, sde, x0, t=t, noise=noise)
                out[f"dsm_loss/{k}/per_sample"] = ss.dsm_loss(model, sde, x0, t=t, noise=noise, per_sample=True)
                out[f"dsm_loss/{k}/likelihood_weighting"] = ss.dsm_loss(
                    model, sde, x0, t=t, noise=noise, likelihood_weighting=True, reduce_mean=False, per_sample=True)
                if sname == "vp":
                    out[f"ddpm_loss/{k}"] = ss.ddpm_loss(model, sde, x0, t_index=torch.arange(B) * 97, noise=noise,
                                                         per_sample=True)
                else:
                    out[f"smld_loss/{k}"] = ss.smld_loss(model, sde, x0, sigma_index=torch.arange(B) * 97,
                                                         noise=noise, per_sample=True)
        sde = ss.VPSDE()
        out["dsm_loss/vp/analytic"] = ss.dsm_loss(mix.score_fn(sde), sde, x0, t=t, noise=noise, per_sample=True)
        key = "dsm_loss/vp/analytic_generator"
        out[key] = ss.dsm_loss(mix.score_fn(sde), sde, x0, generator=gen(key), per_sample=True)
    return out


# --- the run fixture: training and resuming through ss.train ------------------------------------------------
def train_main_run(out: str):
    """The main_run fixture's training: ss.train of MAIN_RUN_CONFIG into `out`."""
    return ss.train(MAIN_RUN_CONFIG, out=out)


def read_checkpoint_file(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta without config.out) of a checkpoint file, read by safetensors itself."""
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    meta["config"].pop("out")
    return load_file(path), meta


def log_column(run_dir: str, column: str) -> list[str]:
    with open(os.path.join(run_dir, "log.csv")) as f:
        rows = [line.rstrip("\n").split(",") for line in f if line.strip()]
    i = rows[0].index(column)
    return [r[i] for r in rows[1:]]


def resume(run_copy: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Resume a copy of main_run to RESUME_STEPS: (tensors, strings) of the result to pin."""
    result = ss.train({"train": {"steps": RESUME_STEPS}}, out=run_copy, resume=True, **UNVERIFIED)
    assert result.step == RESUME_STEPS and os.path.basename(result.resumed_from) == "ckpt_00000040.safetensors"
    tensors, meta = read_checkpoint_file(result.checkpoint)
    out = {f"resume/ckpt/{k}": v for k, v in tensors.items()}
    model, _ = ss.load(run_copy)
    out["resume/ema_sum"] = torch.stack([v.double().sum() for v in model.state_dict().values()]).sum()
    out["resume/samples"] = torch.from_numpy(np.load(os.path.join(run_copy, "samples.npy")))
    loss = log_column(run_copy, "loss")
    out["resume/log_loss"] = torch.tensor([float(v) for v in loss], dtype=torch.float64)
    strings = {"resume/checkpoint": os.path.basename(result.checkpoint),
               "resume/meta": json.dumps(meta, sort_keys=True),
               "resume/log_loss": json.dumps(loss), "resume/log_step": json.dumps(log_column(run_copy, "step")),
               "resume/final_loss": repr(result.loss),
               "resume/metrics": json.dumps({k: v for k, v in result.metrics.items() if "seconds" not in k},
                                            sort_keys=True)}
    return out, strings


def compute_all(run_dir: str, tmp: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {}
    for group in (analytic_samples(), model_samples(run_dir), likelihoods(run_dir), losses_and_forwards()):
        assert not set(group) & set(tensors)
        tensors.update(group)
    run_copy = os.path.join(tmp, "resumed")
    shutil.copytree(run_dir, run_copy)
    res, strings = resume(run_copy)
    tensors.update(res)
    strings["samplers"] = json.dumps(ss.list_samplers())
    return tensors, strings


def write_main_run() -> None:
    shutil.rmtree(MAIN_RUN_OUT, ignore_errors=True)
    train_main_run(MAIN_RUN_OUT)
    shutil.rmtree(MAIN_RUN, ignore_errors=True)
    shutil.copytree(MAIN_RUN_OUT, MAIN_RUN,          # only KEEP from the top of the run directory
                    ignore=lambda d, names: [n for n in names if n not in KEEP] if d == MAIN_RUN_OUT else [])
    with open(os.path.join(MAIN_RUN, "README.md"), "w") as f:
        f.write("A run directory written by scoresde at commit 8c26e4f through the public API (the engine):\n"
                "`ss.train(MAIN_RUN_CONFIG, out=\"/tmp/scoresde_main_run\")` of tests/data/pinned/make_pinned.py\n"
                "(the default 2-D mixture / MLP / VP job made small: 40 steps, checkpoints at 20 and 40), then\n"
                "copied here without its PNGs and lock. tests/test_pinned_outputs.py checks that it loads,\n"
                "samples and resumes bit for bit as it did, and that training reproduces its checkpoints.\n"
                "Regenerate with `make_pinned.py --main-run` (see its docstring), never by hand.\n")
    shutil.rmtree(MAIN_RUN_OUT, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--main-run", action="store_true", help="also rewrite tests/data/main_run (train it anew)")
    args = ap.parse_args()
    torch.set_num_threads(1)                   # as the tests (tests/conftest.py)
    print("scoresde from", ss.__file__, file=sys.stderr)
    if args.main_run:
        write_main_run()
    with tempfile.TemporaryDirectory() as tmp:
        tensors, strings = compute_all(MAIN_RUN, tmp)
    strings["made_with"] = f"scoresde {ss.__version__} from {os.path.dirname(ss.__file__)}, torch {torch.__version__}"
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUTPUTS, metadata=strings)
    print(f"{len(tensors)} tensors -> {OUTPUTS}", file=sys.stderr)


if __name__ == "__main__":
    main()

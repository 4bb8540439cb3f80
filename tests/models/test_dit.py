"""DiT: the official facebookresearch/DiT fixtures (tests/fixtures/dit, made with the unmodified official
models.py), preset parameter counts and state-dict keys, zero initialisation, shapes and errors,
`load_dit` and its timestep map, guidance, and training / sampling / likelihood / checkpoints."""
import argparse
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import scoresde as ss
from scoresde.nets import count_parameters, get_model
from scoresde.models.nets.dit import DIT_PRESETS, sincos_pos_embed_2d, timestep_embedding
from scoresde.pretrained.dit import OFFICIAL_DEFAULTS, DiscreteTimestepScoreModel
from problems import TESTS

DATA = TESTS / "fixtures" / "dit"
ARGS_A = dict(depth=2, hidden_size=64, num_heads=4, patch_size=2, input_size=8, in_channels=4, num_classes=10,
              learn_sigma=True, class_dropout_prob=0.1)     # fixture A's official constructor arguments
TINY = dict(depth=2, hidden_size=32, num_heads=2, patch_size=2)


@pytest.fixture(scope="module")
def fx():
    return load_file(DATA / "dit_tiny_a.safetensors")


@pytest.fixture(scope="module")
def state_dict(fx):
    return {k[len("state_dict."):]: v for k, v in fx.items() if k.startswith("state_dict.")}


def rel_err(a, b):
    """max |a - b| / max |b|."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def randomize_(net, std=0.05):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


# --- the official fixtures ------------------------------------------------------------------------
def test_fixture_forward_reproduces_the_official_output(fx, state_dict):
    net = get_model("dit", data_shape=(4, 8, 8), num_classes=10, learn_sigma=True, **{k: ARGS_A[k] for k in TINY})
    net.load_state_dict(state_dict, strict=True)
    net.eval()
    assert torch.equal(net.pos_embed, get_model("dit", **net.config).pos_embed)   # fresh sin-cos table = official
    with torch.no_grad():
        out = net(fx["x"], fx["t"], fx["y"])
        out_int = net(fx["x"], fx["t"].long(), fx["y"])              # official callers pass int64 timesteps
        raw = net(fx["x_cfg"], fx["t_cfg"], fx["y_cfg"])
    assert out.shape == (4, 8, 8, 8) and rel_err(out, fx["out"]) <= 1e-5
    assert torch.equal(out, out_int)
    assert rel_err(raw, fx["out_cfg_raw"]) <= 1e-5
    # the official forward_with_cfg: guidance on channels [:3] only ("for exact reproducibility"), both halves
    cond, uncond = raw[:4, :3], raw[4:, :3]
    guided = torch.cat([uncond + 4.0 * (cond - uncond)] * 2)
    assert rel_err(torch.cat([guided, raw[:, 3:]], 1), fx["out_cfg"]) <= 1e-5


def test_load_dit_from_state_dict_pt_safetensors_and_train_checkpoint(fx, state_dict, tmp_path):
    torch.save(state_dict, tmp_path / "a.pt")
    save_file(state_dict, tmp_path / "a.safetensors")
    ckpt = {"model": {k: torch.zeros_like(v) for k, v in state_dict.items()}, "ema": state_dict,
            "opt": {"state": {}}, "args": argparse.Namespace(model="DiT-XL/2", image_size=256)}
    torch.save(ckpt, tmp_path / "0400000.pt")                           # official train.py layout: ema is used
    for src in [state_dict, tmp_path / "a.pt", str(tmp_path / "a.safetensors"), tmp_path / "0400000.pt"]:
        model, sde = ss.load_dit(src, **ARGS_A)
        assert isinstance(model, DiscreteTimestepScoreModel) and not model.training
        assert isinstance(sde, ss.VPSDE) and sde.N == 1000
        with torch.no_grad():
            assert rel_err(model.net(fx["x"], fx["t"], fx["y"]), fx["out"]) <= 1e-5
    torch.testing.assert_close(sde.discrete_betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))


def test_timestep_map_is_exact_at_the_discrete_noise_levels():
    model, sde = ss.load_dit(get_model("dit", data_shape=(4, 8, 8), num_classes=10, learn_sigma=True,
                                       **{k: ARGS_A[k] for k in TINY}).state_dict(), **ARGS_A)
    ab = sde.alphas_cumprod                                              # prod (1 - beta_j), float64
    t_i = sde._t_from_log_mean_coeff(0.5 * ab.log())                     # alpha(t_i)^2 = alpha_bar_i
    _, sigma = sde.marginal_coefs(t_i)
    torch.testing.assert_close(sigma, (1 - ab).sqrt())                   # the SDE's noise level is DDPM's there
    c = model.condition(t_i, sigma)
    assert (c - torch.arange(1000.0, dtype=torch.float64)).abs().max() < 1e-6
    assert (model.condition(t_i.float(), sigma.float()).double() - torch.arange(1000.0)).abs().max() < 1e-3
    c = model.condition(torch.tensor([1e-5, 5e-4, 1e-3, 0.5, 1.0], dtype=torch.float64), None)
    assert c[0] == 0 and c[1] == 0 and 0 < c[2] < 1 and 498 < c[3] < 499 and 995 < c[4] < 996
    # 999 t would be off: at t = (i + 1)/1000 the continuous noise level is 5 % above DDPM's sigma_0
    assert abs(sde.marginal_coefs(torch.tensor(1e-3, dtype=torch.float64))[1] / (1 - ab[0]).sqrt() - 1) > 0.04


def test_guided_score_reproduces_the_official_cfg_output(fx, state_dict):
    """classifier_free_score at the t of the fixture's timesteps: -eps_guided / sigma_i (float64, so that
    t -> timestep is exact to 1e-10; the weights and inputs are the fixture's float32 values)."""
    model, sde = ss.load_dit(state_dict, **ARGS_A)
    model.double()
    idx = fx["t"].long()
    ab = sde.alphas_cumprod[idx]
    t = sde._t_from_log_mean_coeff(0.5 * ab.log())
    y = fx["y_cfg"][:4]                                                  # [0, 1, 2, 9]
    with torch.no_grad():
        score = ss.classifier_free_score(model, y, 4.0)(fx["x"].double(), t)
        raw = model.net(fx["x_cfg"].double(), fx["t_cfg"].double(), fx["y_cfg"])
    sigma = (1 - ab).sqrt()[:, None, None, None]
    assert score.shape == (4, 4, 8, 8)                                   # the variance channels are dropped
    assert rel_err(score[:, :3], -fx["out_cfg"][:4, :3] / sigma) <= 1e-5
    # all 4 channels are guided here (the official code guides 3, a hard-coded quirk)
    cond, uncond = raw[:4, :4], raw[4:, :4]
    torch.testing.assert_close(score, -(uncond + 4.0 * (cond - uncond)) / sigma)
    with torch.no_grad():                                                # w = 1: the conditional score
        torch.testing.assert_close(ss.classifier_free_score(model, y, 1.0)(fx["x"].double(), t),
                                   model(fx["x"].double(), t, y=y))


def test_load_dit_errors(state_dict, tmp_path):
    with pytest.raises(ValueError, match=r"pos_embed .*hint: input_size=8"):
        ss.load_dit(state_dict, **{**ARGS_A, "input_size": 16})
    with pytest.raises(ValueError, match="hint: learn_sigma=True"):
        ss.load_dit(state_dict, **{**ARGS_A, "learn_sigma": False})
    with pytest.raises(ValueError, match="embedding_table.*11 rows"):
        ss.load_dit(state_dict, **{**ARGS_A, "class_dropout_prob": 0.0})
    with pytest.raises(ValueError, match="missing keys.*depth 2, hidden_size 64"):
        ss.load_dit(state_dict, **{**ARGS_A, "depth": 3})
    with pytest.raises(ValueError, match="model: 'DiT-S/2' sets"):
        ss.load_dit(state_dict, model="DiT-S/2", depth=2)
    with pytest.raises(ValueError, match="model: expected one of"):
        ss.load_dit(state_dict, model="DiT-M/2")
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['image_size'\]"):
        ss.load_dit(state_dict, image_size=256)
    with pytest.raises(TypeError, match="path_or_state_dict"):
        ss.load_dit(3)
    with pytest.raises(FileNotFoundError, match="path_or_state_dict"):
        ss.load_dit(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="path_or_state_dict: .*not a torch file"):
        ss.load_dit(tmp_path / "junk.pt")


def test_official_defaults_and_no_null_row():
    assert OFFICIAL_DEFAULTS["hidden_size"] == DIT_PRESETS["DiT-XL/2"]["hidden_size"] == 1152
    # class_dropout_prob = 0: the official table has no null row, so no unconditional score
    net = get_model("dit", data_shape=(4, 8, 8), num_classes=10, null_label=False, **TINY)
    assert net.y_embedder.embedding_table.num_embeddings == 10
    model, _ = ss.load_dit(net.state_dict(), **{**ARGS_A, **TINY, "class_dropout_prob": 0.0, "learn_sigma": False})
    with pytest.raises(ValueError, match=r"y: expected labels in \[0, 9\] \(this network has no null label"):
        model(torch.randn(2, 4, 8, 8), 0.5)


# --- architecture ---------------------------------------------------------------------------------
def test_preset_parameter_counts_equal_the_official():
    ref = json.loads((DATA / "param_counts.json").read_text())
    assert len(ref["configs"]) == len(DIT_PRESETS) == 12
    for name, counts in ref["configs"].items():
        for learn_sigma in (True, False):
            with torch.device("meta"):
                net = get_model("dit", data_shape=(4, 32, 32), preset=name, num_classes=1000, learn_sigma=learn_sigma)
            r = counts[f"learn_sigma_{learn_sigma}"]
            assert count_parameters(net, trainable_only=False) == r["total_params_incl_pos_embed"], name
            assert count_parameters(net) == r["trainable_params_excl_pos_embed"], name
            assert net.pos_embed.numel() == r["pos_embed_numel"]
            assert len(net.state_dict()) == r["num_state_dict_tensors"]


def test_state_dict_keys_and_shapes_equal_the_official_xl2():
    ref = json.loads((DATA / "dit_xl2_256_state_dict_keys.json").read_text())["keys"]
    with torch.device("meta"):
        net = get_model("dit", data_shape=(4, 32, 32), preset="DiT-XL/2", num_classes=1000, learn_sigma=True)
    sd = net.state_dict()
    assert list(sd) == [k for k, _, _ in ref] and len(sd) == 292
    assert all(list(sd[k].shape) == shape for k, shape, _ in ref)


@pytest.mark.parametrize("shape,patch,classes", [((4, 8, 8), 2, 10), ((3, 12, 20), 4, None), ((1, 8, 16), 8, 3)])
def test_fresh_network_outputs_exactly_zero(shape, patch, classes):
    net = get_model("dit", data_shape=shape, **{**TINY, "patch_size": patch}, num_classes=classes)
    out = net(torch.randn(3, *shape), torch.tensor([0.0, 500.0, 999.0]))
    assert out.shape == (3, *shape) and torch.equal(out, torch.zeros_like(out))
    assert net.grid == (shape[1] // patch, shape[2] // patch)


def test_shapes_gradients_and_config_roundtrip():
    net = randomize_(get_model("dit", data_shape=(3, 12, 20), num_classes=5, learn_sigma=True,
                               **{**TINY, "patch_size": 4}))
    x, c, y = torch.randn(2, 3, 12, 20), torch.tensor([3.0, 700.0]), torch.tensor([1, 5])
    out = net(x, c, y)
    assert out.shape == (2, 6, 12, 20)
    out.square().sum().backward()
    for k, p in net.named_parameters():
        assert (p.grad is None) == (k == "pos_embed"), k                 # pos_embed is fixed
        assert p.grad is None or p.grad.abs().sum() > 0, k
    net2 = get_model("dit", **json.loads(json.dumps(net.config)))
    net2.load_state_dict(net.state_dict(), strict=True)
    torch.testing.assert_close(net2(x, c, y), net(x, c, y))
    torch.testing.assert_close(net(x, c), net(x, c, torch.tensor([5, 5])))   # y=None is the null label
    # a patch sees only its own pixels through the embedding: the layout of unpatchify inverts patchify
    assert (net(x, c, torch.tensor([0, 1])) - net(x, c, y)).abs().max() > 1e-4


def test_float64_and_bf16_autocast():
    net = randomize_(get_model("dit", data_shape=(2, 8, 8), **TINY))
    x, c = torch.randn(2, 2, 8, 8), torch.tensor([1.0, 900.0])
    ref = net.double()(x.double(), c.double())
    assert ref.dtype == torch.float64
    net.float()
    torch.testing.assert_close(net(x, c), ref.float(), rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, c)
    assert out.dtype == torch.float32 and (out - ref.float()).abs().max() < 0.05 * ref.abs().max()


def test_position_embedding_layout():
    pe = sincos_pos_embed_2d(8, 2, 3)                # 2 rows, 3 columns, row-major tokens
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    for tok in range(6):
        r, col = divmod(tok, 3)
        expect = torch.cat([torch.sin(col * omega), torch.cos(col * omega), torch.sin(r * omega), torch.cos(r * omega)])
        torch.testing.assert_close(pe[tok], expect)
    c = torch.tensor([0.0, 10.0])
    e = timestep_embedding(c, 8)
    w = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(e, torch.cat([torch.cos(c[:, None] * w), torch.sin(c[:, None] * w)], 1))


def test_errors():
    with pytest.raises(ValueError, match=r"data_shape: expected H and W divisible by patch_size=4, found 8x10"):
        get_model("dit", data_shape=(3, 8, 10), preset="DiT-S/4")
    with pytest.raises(ValueError, match=r"data_shape: a DiT expects images or latents \(C, H, W\)"):
        get_model("dit", data_shape=(2,))
    with pytest.raises(ValueError, match="hidden_size: expected a multiple of num_heads=3, found 32"):
        get_model("dit", data_shape=(1, 8, 8), depth=1, hidden_size=32, num_heads=3)
    with pytest.raises(ValueError, match="hidden_size: expected a multiple of 4"):
        get_model("dit", data_shape=(1, 8, 8), depth=1, hidden_size=6, num_heads=1)
    with pytest.raises(ValueError, match="preset: expected one of"):
        get_model("dit", preset="DiT-XXL/2")
    with pytest.raises(TypeError, match="depth: expected an int"):
        get_model("dit", depth=2.5)
    with pytest.raises(TypeError, match="learn_sigma: expected a bool"):
        get_model("dit", learn_sigma=1)
    with pytest.raises(ValueError, match="embedding"):
        get_model("dit", embedding="learned")
    net = get_model("dit", data_shape=(1, 8, 8), num_classes=3, **TINY)
    x, c = torch.randn(2, 1, 8, 8), torch.zeros(2)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, 8, 8\)"):
        net(torch.randn(2, 1, 8, 6), c)
    with pytest.raises(ValueError, match=r"y: expected labels in \[0, 3\] \(3 = the null label\), found min 0, max 4"):
        net(x, c, torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="y: expected an integer"):
        net(x, c, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="unconditional"):
        get_model("dit", data_shape=(1, 8, 8), **TINY)(x, c, torch.tensor([0, 1]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_forward_has_no_host_sync_and_compiles():
    from scoresde.nets import autocast, prepare_model
    net = randomize_(get_model("dit", data_shape=(4, 16, 16), num_classes=10, **TINY))
    run = prepare_model(net, "cuda", channels_last=False)
    x, c = torch.randn(4, 4, 16, 16, device="cuda"), 999 * torch.rand(4, device="cuda")
    y = torch.arange(4, device="cuda")
    ref = run(x, c, y)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with autocast("cuda"), torch.no_grad():
            out = run(x, c, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.05 * ref.abs().max()
    compiled = torch.compile(net, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, c, y), ref, rtol=1e-3, atol=1e-3)


def test_score_model_drops_the_variance_channels():
    net = randomize_(get_model("dit", data_shape=(2, 8, 8), learn_sigma=True, **TINY))
    sde = ss.VPSDE()
    model = ss.ScoreModel(net, sde)
    x, t = torch.randn(3, 2, 8, 8), torch.tensor([0.1, 0.5, 0.9])
    _, sigma = sde.marginal_coefs(t)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), -net(x, 999 * t)[:, :2] / sigma[:, None, None, None])


# --- with everything else -------------------------------------------------------------------------
CFG = {"data": {"name": "digits"}, "model": {"name": "dit", **TINY},
       "train": {"steps": 6, "batch_size": 16, "warmup": 2, "log_every": 3, "ckpt_every": 3, "progress": False},
       "sample": {"n": 4, "steps": 3}, "device": "cpu"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A class-conditional run through ss.train and an unconditional one through `scoresde train`."""
    from helpers import run
    d = tmp_path_factory.mktemp("dit_runs")
    cond = ss.train({**CFG, "model": {**CFG["model"], "num_classes": "auto"}}, out=str(d / "c"))
    r = run("train", "--out", str(d / "u"), "--data", "digits", "--device", "cpu", "--no-progress", "--steps", "6",
            "--batch-size", "16", "--set", "model.name=dit", "--set", "model.depth=2", "--set", "model.hidden_size=32",
            "--set", "model.num_heads=2", "--set", "train.ckpt_every=3", "--set", "sample.n=4",
            "--set", "sample.steps=3")
    assert r.exit_code == 0, r.output + r.stderr
    return {"cond": d / "c", "uncond": d / "u", "cond_result": cond}


def test_training_checkpoints_sampling_and_likelihood(trained):
    res = trained["cond_result"]
    assert res.step == 6 and res.loss is not None and torch.isfinite(torch.tensor(res.loss))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ss.load(trained["cond"])[0](x, 0.4), res.model(x, 0.4))  # EMA weights round trip
    for kind in ["cond", "uncond"]:
        model, sde = ss.load(trained[kind])
        assert model.net.config.get("num_classes") == (10 if kind == "cond" else None)
        assert model.net.config["depth"] == 2 and model.net.config["hidden_size"] == 32
        with torch.no_grad():
            raw, _ = ss.load(trained[kind], ema=False)
            assert raw.net(x, torch.full((3,), 400.0)).abs().max() > 0      # trained away from the zero init
            assert not torch.equal(raw(x, 0.4), model(x, 0.4))               # raw and EMA weights differ
        g = torch.Generator().manual_seed(0)
        for sampler in ["euler_maruyama", "ddim", "ode"]:
            s = sde.sample(model, 2, sampler=sampler, steps=3, generator=g)
            assert s.shape == (2, 1, 8, 8) and torch.isfinite(s).all()
        logp = sde.log_likelihood(model, torch.rand(2, 1, 8, 8) * 2 - 1, divergence="hutchinson",
                                  rtol=1e-3, atol=1e-3, generator=g)
        assert logp.shape == (2,) and torch.isfinite(logp).all()


def test_class_conditional_training_and_guidance(trained):
    model, sde = ss.load(trained["cond"])
    assert model.num_classes == 10 and model.net.y_embedder.embedding_table.num_embeddings == 11
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 0.3)
    y = torch.tensor([0, 3, 7, 9])
    with torch.no_grad():
        s = ss.classifier_free_score(model, y, 2.0)(x, t)
        torch.testing.assert_close(s, 2.0 * model(x, t, y=y) - model(x, t))
    assert (model(x, t, y=y) - model(x, t)).abs().max() > 0                  # labels matter after training
    g = torch.Generator().manual_seed(0)
    out = sde.sample(ss.classifier_free_score(model, 7, 3.0), 2, sampler="ddim", steps=3, generator=g)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_cli_samples_a_trained_dit_with_label_and_guidance(trained, tmp_path):
    import numpy as np
    from helpers import run
    for run_dir, extra in [(trained["cond"], ["--label", "4", "--guidance", "2.5"]), (trained["uncond"], [])]:
        out = tmp_path / "s.npy"
        r = run("sample", "--checkpoint", str(run_dir), "--n", "3", "--steps", "2", "--device", "cpu", *extra,
                "--out", str(out))
        assert r.exit_code == 0, r.output + r.stderr
        x = np.load(out)
        assert x.shape == (3, 1, 8, 8) and np.isfinite(x).all()

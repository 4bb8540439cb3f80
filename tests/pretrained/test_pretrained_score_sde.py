"""Official score_sde checkpoints: exact reproduction of the reference's fixtures, presets against the
official configs (fields, labels, parameter counts, state-dict keys), EMA / raw weights, the
`module.` prefix, refusal of hostile and mismatched files, and sampling / likelihood of a loaded model."""
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file

import scoresde as ss
from scoresde.models.nets.layers import GaussianFourierProjection
from scoresde.pretrained import score_sde as S
from scoresde.pretrained.score_sde_keys import official_entries
from problems import TESTS

DATA = os.path.join(str(TESTS), "fixtures", "score_sde")
FIXTURES = ["ncsnpp_ve_continuous_randw", "ddpmpp_vp_continuous_randw", "ddpm_vp_continuous_randw"]
# paths the official fixtures do not reach, from a transcription of the official code (data/README.md)
MORE = ["ncsnpp_ffhq256_like", "ncsnpp_cat_ddpmblocks", "ncsnpp_ve_discrete", "ddpmpp_vp_discrete",
        "ddpm_ve_discrete"]
REF = json.load(open(os.path.join(DATA, "configs_reference.json")))["configs"]


def fixture(name):
    meta = json.load(open(os.path.join(DATA, f"{name}.json")))
    tensors = load_file(os.path.join(DATA, f"{name}.safetensors"))
    sd = {k[len("state_dict."):]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    return meta, tensors, sd


def rel_err(a, b):
    """max |a - b| / max |b|: the issue's exactness measure."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def official_checkpoint(meta, sd, scale=2.0):
    """score_sde's checkpoint layout, with EMA weights that differ from the raw ones (x scale); the
    EMA list follows the reference's parameter order (its state-dict order, recorded in the JSON)."""
    shadow = [sd[k] * scale for k in meta["state_dict_keys"] if not k.endswith(("sigmas", "all_modules.0.W"))]
    return {"optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "params": list(range(len(shadow)))}]},
            "model": sd, "ema": {"decay": 0.9999, "num_updates": 7, "shadow_params": shadow}, "step": 7}


# --- exactness ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXTURES + MORE)
def test_fixture_raw_output_and_score_reproduce(name):
    meta, ts, sd = fixture(name)
    model, sde = ss.load_score_sde(sd, meta["config"])
    x, t = ts["x"], ts["t"]
    with torch.no_grad():
        assert torch.equal(model.labels(t, x), ts["labels"])                 # the reference's own labels
        raw, score = model.net(x, ts["labels"]), model(x, t)
    assert raw.dtype == score.dtype == torch.float32
    assert rel_err(raw, ts["raw_output"]) <= 1e-5, rel_err(raw, ts["raw_output"])
    assert rel_err(score, ts["score"]) <= 1e-5, rel_err(score, ts["score"])
    # and the network is not trivially matching: another input gives another output
    with torch.no_grad():
        assert rel_err(model.net(x.flip(0), ts["labels"]), ts["raw_output"]) > 0.01
    assert type(sde).__name__ == {"vesde": "VESDE", "vpsde": "VPSDE"}[meta["config"]["training"]["sde"]]


@pytest.mark.parametrize("name", FIXTURES + MORE)
def test_fixture_shapes_of_every_key_match_our_network(name):
    meta, _, sd = fixture(name)
    model, _ = ss.load_score_sde(sd, meta["config"])
    entries = official_entries(model.net)
    assert ["module." + e.key for e in entries] == list(meta["state_dict_keys"])   # same keys, same order


# --- presets against the official configs ---------------------------------------------------------
def test_presets_and_refusals_cover_every_official_config():
    assert sorted(S.list_configs() + list(S.refused_configs())) == sorted(REF)
    assert len(S.list_configs()) == 27 and len(S.refused_configs()) == 12
    for name in S.refused_configs():            # exactly those the official code cannot build
        assert REF[name]["build_error"], name
    for name in S.list_configs():
        assert not REF[name]["build_error"], name


@pytest.mark.parametrize("name", S.list_configs())
def test_preset_fields_equal_the_official_config(name):
    _, cfg = S.resolve_config(name)
    ref = REF[name]["config"]
    for section, fields in cfg.items():
        for key, value in fields.items():
            assert ref[section].get(key) == value, (section, key)


@pytest.mark.parametrize("name", S.list_configs())
def test_preset_builds_the_reference_parameter_count(name):
    _, cfg = S.resolve_config(name)
    with torch.device("meta"):
        net = S.build_network(cfg)
    trainable = sum(p.numel() for p in net.parameters())
    fourier = sum(m.W.numel() for m in net.modules() if isinstance(m, GaussianFourierProjection))
    assert (trainable, fourier) == (REF[name]["trainable_params"], REF[name]["non_trainable_params"])
    assert len(official_entries(net)) == REF[name]["num_state_dict_entries"]


@pytest.mark.parametrize("name", S.list_configs())
def test_preset_labels_and_std_equal_the_reference_score_fn(name):
    """The labels (and VP std) score_sde's get_score_fn passes, recorded at t = 1 ... 0.001."""
    ex = REF[name]["labels_example"]
    _, cfg = S.resolve_config(name)
    model = S.ScoreSDEModel(torch.nn.Identity(), S.build_sde(cfg), cfg, preset=name)
    t = torch.tensor(ex["t"])
    labels, _, std = model._reference(t)
    assert str(labels.dtype) == f"torch.{ex['labels_dtype']}"
    assert torch.equal(labels, torch.tensor(ex["labels"], dtype=labels.dtype))
    if "std_used_by_score_fn" in ex:
        # float32 exp(): the reference's values to the last bit or one unit in the last place
        torch.testing.assert_close(std, torch.tensor(ex["std_used_by_score_fn"]), rtol=2.5e-7, atol=0)


@pytest.mark.parametrize("model_name,preset", [("ncsnpp_ve_continuous", "ve/cifar10_ncsnpp_continuous"),
                                               ("ddpmpp_vp_continuous", "vp/cifar10_ddpmpp_continuous"),
                                               ("ddpm_vp_continuous", "vp/ddpm/cifar10_continuous")])
def test_full_size_keys_and_shapes_match_the_reference(model_name, preset):
    ref = json.load(open(os.path.join(DATA, "full_size_cifar10_keys.json")))["models"][model_name]["keys"]
    _, cfg = S.resolve_config(preset)
    with torch.device("meta"):
        net = S.build_network(cfg)
    ours = net.state_dict()
    got = []
    for e in official_entries(net):
        if not e.target:
            got.append(["module." + e.key, [cfg["model"]["num_scales"]]])
            continue
        t = ours[e.target] if e.rows is None else ours[e.target][e.rows]
        got.append(["module." + e.key, [t.shape[1], t.shape[0]] if e.nin else list(t.shape)])
    assert got == ref


def test_score_sde_ddpm_variant_and_our_ddpm():
    """score_sde's DDPM keeps one attention block per up level: 35,218,947 vs DDPM's 35,746,307."""
    with torch.device("meta"):
        ours = ss.get_model("ddpm_unet", data_shape=(3, 32, 32))
        theirs = ss.get_model("ddpm_unet", data_shape=(3, 32, 32), attn_each_up_block=False)
    count = lambda n: sum(p.numel() for p in n.parameters())  # noqa: E731
    assert (count(ours), count(theirs)) == (35_746_307, 35_218_947)
    assert count(ours) - count(theirs) == 2 * (4 * 256 * 256 + 4 * 256 + 2 * 256)    # two 256-ch attention blocks


@pytest.mark.parametrize("name", ["ve/ncsn/cifar10", "ve/ncsnv2/bedroom", "vp/ddpm/cifar10_unconditional"])
def test_refused_presets_say_why(name):
    with pytest.raises(ValueError, match="refused: .*(RefineNet|conditional)"):
        ss.load_score_sde({}, name)


def test_bad_configs():
    _, ve = S.resolve_config("ve/cifar10_ncsnpp_continuous")
    with pytest.raises(KeyError, match="unknown preset 'cifar10'.*ve/cifar10_ncsnpp_continuous"):
        S.resolve_config("cifar10")
    with pytest.raises(TypeError, match="config: expected a preset name"):
        S.resolve_config(3)
    cases = [({"training": {"continuous": False}}, "fourier.*continuous"),
             ({"model": {"progressive": "residual"}}, "fused FIR up-sampling"),
             ({"model": {"progressive": "output_skip", "fir": False}}, "fails in the official code"),
             ({"model": {"name": "ncsnv2_64"}}, "RefineNet"),
             ({"model": {"nonlinearity": "elu"}}, "swish"),
             ({"training": {"sde": "edm"}}, "training.sde")]
    for change, msg in cases:
        cfg = json.loads(json.dumps(ve))
        for section, fields in change.items():
            cfg[section].update(fields)
        with pytest.raises(ValueError, match=msg):
            S.resolve_config(cfg)
    del ve["model"]["nf"]
    with pytest.raises(ValueError, match=r"missing model\.nf"):
        S.resolve_config(ve)


# --- checkpoint files ---------------------------------------------------------------------------
def test_ema_weights_by_default_raw_on_request_and_module_prefix(tmp_path):
    meta, ts, sd = fixture("ncsnpp_ve_continuous_randw")
    path = tmp_path / "checkpoint_7.pth"
    torch.save(official_checkpoint(meta, sd), path)
    ema_model, _ = ss.load_score_sde(path, meta["config"])
    raw_model, _ = ss.load_score_sde(str(path), meta["config"], ema=False)
    # trainable parameters from the EMA list (x2 here), the Fourier W from checkpoint['model']
    assert torch.equal(ema_model.net.conv_in.weight, 2 * sd["module.all_modules.3.weight"])
    assert torch.equal(raw_model.net.conv_in.weight, sd["module.all_modules.3.weight"])
    assert torch.equal(ema_model.net.embed.W, sd["module.all_modules.0.W"])
    k = next(e for e in official_entries(ema_model.net) if e.key.endswith("NIN_1.W"))   # an attention key
    assert torch.equal(ema_model.net.state_dict()[k.target][k.rows], 2 * sd["module." + k.key].t())
    with torch.no_grad():
        assert rel_err(raw_model(ts["x"], ts["t"]), ts["score"]) <= 1e-5
        assert rel_err(ema_model(ts["x"], ts["t"]), ts["score"]) > 0.01
    bare = {k[len("module."):]: v for k, v in sd.items() if "sigmas" not in k}  # no prefix, no unused table
    plain, _ = ss.load_score_sde(bare, meta["config"])
    with torch.no_grad():
        assert torch.equal(plain.net(ts["x"], ts["labels"]), raw_model.net(ts["x"], ts["labels"]))
    no_ema = tmp_path / "no_ema.pth"
    torch.save({"model": sd, "step": 1}, no_ema)
    with pytest.raises(ValueError, match="no EMA weights.*ema=False"):
        ss.load_score_sde(no_ema, meta["config"])


class _Hostile:
    """Unpickling this would create a file: weights_only loading must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_hostile_and_non_checkpoint_files_are_refused(tmp_path):
    meta, _, sd = fixture("ddpmpp_vp_continuous_randw")
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pth"
    torch.save({"model": sd, "payload": _Hostile(str(marker))}, path)
    with pytest.raises(ValueError, match="refused: loading it would unpickle more than tensors"):
        ss.load_score_sde(path, meta["config"])
    assert not marker.exists()
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        ss.load_score_sde(text, meta["config"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        ss.load_score_sde(tmp_path / "missing.pth", meta["config"])
    with pytest.raises(ValueError, match="expected score_sde's"):
        ss.load_score_sde([1, 2], meta["config"])
    with pytest.raises(ValueError, match="state dict"):
        ss.load_score_sde({"model": {"a": 1}}, meta["config"])


def test_mismatched_checkpoint_names_the_first_key_and_both_shapes(tmp_path):
    meta, _, sd = fixture("ncsnpp_ve_continuous_randw")
    cfg = json.loads(json.dumps(meta["config"]))
    cfg["model"]["nf"] = 32
    with pytest.raises(ValueError, match=re.escape("'module.all_modules.0.W' has shape (16,) in the checkpoint, "
                                                   "(32,) in the config")):
        ss.load_score_sde(sd, cfg)
    other = fixture("ddpmpp_vp_continuous_randw")[2]       # DDPM++ weights under the NCSN++ config
    with pytest.raises(ValueError, match=r"'module.all_modules.0.W' is missing \(expected shape \(16,\)\)"):
        ss.load_score_sde(other, meta["config"])
    extra = dict(sd, **{"module.all_modules.999.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"'module.all_modules.999.weight' \(shape \(3,\)\) is not in"):
        ss.load_score_sde(extra, meta["config"])
    ckpt = official_checkpoint(meta, sd)
    ckpt["ema"]["shadow_params"] = ckpt["ema"]["shadow_params"][:-1]
    with pytest.raises(ValueError, match="shadow_params'] holds 215 tensors, the network has 216"):
        ss.load_score_sde(ckpt, meta["config"])
    ckpt = official_checkpoint(meta, sd)
    ckpt["ema"]["shadow_params"][0] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=re.escape("shadow_params[0] ('module.all_modules.1.weight') has shape "
                                                   "(2, 2), (64, 32) in the config")):
        ss.load_score_sde(ckpt, meta["config"])


# --- using a loaded model -------------------------------------------------------------------------
def test_loaded_model_samples_and_has_a_finite_likelihood():
    torch.manual_seed(0)
    for name in ("ncsnpp_ve_continuous_randw", "ddpmpp_vp_continuous_randw"):
        meta, ts, sd = fixture(name)
        model, sde = ss.load_score_sde(sd, meta["config"])
        assert model.data_shape == (3, 16, 16) and not model.training
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for sampler in ("deis", "euler_maruyama"):
                x = sde.sample(model, 2, sampler=sampler, steps=3, generator=g)
                assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    # the probability-flow likelihood of a data point (in the model's space) of the VP model
    x0 = model.from_unit(torch.rand(1, 3, 16, 16, generator=g))
    logp = sde.log_likelihood(model, x0, divergence="hutchinson", rtol=0.1, atol=0.1, generator=g)
    assert logp.shape == (1,) and torch.isfinite(logp).all()


def test_data_space_helpers():
    _, ve = S.resolve_config("ve/cifar10_ncsnpp_continuous")
    _, vp = S.resolve_config("vp/cifar10_ddpmpp_continuous")
    m_ve = S.ScoreSDEModel(torch.nn.Identity(), S.build_sde(ve), ve)
    m_vp = S.ScoreSDEModel(torch.nn.Identity(), S.build_sde(vp), vp)
    u = torch.tensor([0.0, 0.25, 1.0])
    assert m_ve.data_range == (0.0, 1.0) and torch.equal(m_ve.to_unit(u), u)     # VE works on [0, 1]
    assert m_vp.data_range == (-1.0, 1.0) and torch.equal(m_vp.from_unit(u), torch.tensor([-1.0, -0.5, 1.0]))
    assert torch.equal(m_vp.to_unit(m_vp.from_unit(u)), u)
    assert m_ve.reference_sampling == {"sampler": "pc", "steps": 1000, "snr": 0.16, "corrector_steps": 1,
                                       "predictor": "reverse_diffusion", "corrector": "langevin", "denoise": True}

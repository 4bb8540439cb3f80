"""The score task on captioned data: a text encoder trained jointly (prompt dropout to ""), the run's config
and checkpoint rebuild it, resume stays exact, latent training (--autoencoder) takes captions too."""
import pytest
import torch

import scoresde as ss
from scoresde.data.datasets import Dataset, load_dataset
from scoresde.models.text import TransformerTextEncoder
from scoresde.runs.checkpoint import read_checkpoint
from scoresde.training.config import resolve

WORDS = ["zero", "one", "two", "three"]
UNET = {"name": "ddpm_unet", "ch": 8, "ch_mult": [1, 2], "num_groups": 4, "context_dim": 8, "text_depth": 1,
        "text_heads": 2}
QUIET = {"progress": False, "log_every": 2, "warmup": 1}


def captioned(n=32, side=8, seed=0, x=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, side, side, generator=g) * 2 - 1 if x is None else x[:n]
    return Dataset(x, "captioned", kind="images", texts=[f"{WORDS[i % 4]} left of {WORDS[(i // 4) % 4]}"
                                                         for i in range(n)])


def cfg(steps, **train):
    return {"model": UNET, "train": {"steps": steps, "batch_size": 8, "ckpt_every": 2, **QUIET, **train},
            "sample": {"n": 2, "steps": 2}, "device": "cpu"}


def test_captions_make_a_text_model_by_default_sized_for_small_images(tmp_path):
    ds = captioned()
    r = resolve({"model": {"context_dim": 8}}, data=ds)["model"]
    assert r["name"] == "ddpm_unet" and r["ch"] == 32                  # the small U-Net even with context_dim set
    res = ss.train({"model": {"name": "ddpm_unet", "ch": 8, "ch_mult": [1, 2], "num_groups": 4},
                    "train": {"steps": 1, "batch_size": 4, **QUIET}, "sample": {"n": 2, "steps": 1},
                    "device": "cpu"}, data=ds, out=str(tmp_path / "auto"))
    _, meta = read_checkpoint(res.checkpoint)
    model = meta["config"]["model"]
    assert model["text_encoder"] == "transformer" and model["context_dim"] == 64
    assert model["text_len"] == 1 + max(len(t) for t in ds.texts)
    assert meta["model"]["text_encoder"]["config"]["max_len"] == model["text_len"]
    loaded, _ = ss.load(tmp_path / "auto")
    assert isinstance(loaded.text_encoder, TransformerTextEncoder) and loaded.net.context_dim == 64
    # the EMA weights of the encoder are the ones stored
    torch.testing.assert_close(loaded.text_encoder.tokens.weight, res.model.text_encoder.tokens.weight)
    off = ss.train({"model": {"name": "ddpm_unet", "ch": 8, "ch_mult": [1, 2], "num_groups": 4, "text_encoder": ""},
                    "train": {"steps": 1, "batch_size": 4, **QUIET}, "sample": {"n": 2, "steps": 1},
                    "device": "cpu"}, data=ds, out=str(tmp_path / "off"))
    assert off.model.text_encoder is None and off.model.net.context_dim is None


def test_prompt_dropout_replaces_captions_by_the_empty_prompt(tmp_path, monkeypatch):
    seen = []
    real = TransformerTextEncoder.encode

    def spy(self, prompts):
        if self.training:
            seen.extend(prompts)
        return real(self, prompts)
    monkeypatch.setattr(TransformerTextEncoder, "encode", spy)
    ss.train(cfg(2, p_uncond=1.0), data=captioned(), out=str(tmp_path / "all"))
    assert len(seen) == 16 and set(seen) == {""}
    seen.clear()
    ss.train(cfg(2, p_uncond=0.0), data=captioned(), out=str(tmp_path / "none"))
    assert len(seen) == 16 and "" not in seen and set(seen) <= set(captioned().texts)
    seen.clear()
    ss.train(cfg(8, p_uncond=0.5), data=captioned(), out=str(tmp_path / "half"))
    assert 0 < seen.count("") < len(seen)


def test_resume_of_a_text_run_is_bit_identical(tmp_path):
    full = ss.train(cfg(4), data=captioned(), out=str(tmp_path / "full"))
    ss.train(cfg(2), data=captioned(), out=str(tmp_path / "half"))
    resumed = ss.train({"train": {"steps": 4}}, data=captioned(), out=str(tmp_path / "half"), resume=True)
    a, b = read_checkpoint(full.checkpoint)[0], read_checkpoint(resumed.checkpoint)[0]
    assert any(k.startswith("model/text_encoder.") for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_text_config_errors_name_the_key(tmp_path):
    labelled = captioned()
    labelled.labels = torch.arange(32) % 4
    with pytest.raises(ValueError, match="config model.num_classes and model.text_encoder"):
        ss.train({**cfg(1), "model": {**UNET, "num_classes": 4, "text_encoder": "transformer"}}, data=labelled,
                 out=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="config model.text_depth: expected an integer"):
        ss.train({**cfg(1), "model": {**UNET, "text_depth": 1.5}}, data=captioned(), out=str(tmp_path / "b"))
    with pytest.raises(ValueError, match="config model.text_encoder = 'transformer': model 'mlp' has no cross-attention"):
        ss.train({**cfg(1), "model": {"name": "mlp", "text_encoder": "transformer"}}, data=captioned(),
                 out=str(tmp_path / "d"))
    with pytest.raises(KeyError, match="text encoder"):
        ss.train({**cfg(1), "model": {**UNET, "text_encoder": "bert"}}, data=captioned(), out=str(tmp_path / "c"))


def test_latent_training_takes_captions(tmp_path):
    vae = {"ch": 8, "ch_mult": [1, 2], "num_groups": 4, "mid_attn": False}
    ae = ss.train({"task": "autoencoder", "data": {"name": "digits"}, "vae": vae,
                   "train": {"steps": 2, "batch_size": 8, "ckpt_every": 2, **QUIET}, "sample": {"n": 4},
                   "eval": {"n": 8}, "device": "cpu"}, out=str(tmp_path / "ae"))
    assert ae.step == 2
    digits = load_dataset("digits")
    lat = ss.train({**cfg(2), "autoencoder": str(tmp_path / "ae")}, data=captioned(x=digits.x),
                   out=str(tmp_path / "latent"))
    model, _ = ss.load(tmp_path / "latent")
    assert model.text_encoder is not None and model.autoencoder is not None and lat.step == 2
    f = ss.classifier_free_score(model, w=3.0, prompt=["one left of two", "two left of one"])
    with torch.no_grad():
        z = model.sde.sample(f, 2, sampler="ddim", steps=3, generator=torch.Generator().manual_seed(0))
        x = model.autoencoder.decode(z)
    assert z.shape == (2, *model.data_shape) and x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_a_text_run_on_digitpairs_logs_prompt_accuracy(tmp_path):
    """run_metrics on digitpairs: the glyph FID, then the prompt accuracy of the eval draw against the captions it
    was drawn for (the data's, in turn), in log.csv at eval_every and in metrics.json after the final draw."""
    import csv
    import json
    from scoresde.data.digitpairs import digitpairs
    data = digitpairs(40, torch.Generator().manual_seed(0))
    res = ss.train({"model": UNET, "train": {"steps": 2, "batch_size": 4, "eval_every": 2, **QUIET},
                    "sample": {"n": 40, "steps": 2}, "eval": {"n": 40}, "device": "cpu"}, data=data,
                   out=str(tmp_path / "pairs"))
    with open(tmp_path / "pairs" / "log.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("prompt_accuracy")]
    assert rows and 0.0 <= float(rows[-1]["prompt_accuracy"]) <= 1.0 and float(rows[-1]["fid"]) > 0
    metrics = json.loads((tmp_path / "pairs" / "metrics.json").read_text())
    assert {"fid", "prompt_accuracy", "left_accuracy", "right_accuracy"} <= set(metrics), metrics
    assert res.step == 2

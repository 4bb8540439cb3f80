"""The conditioning object `ss.Cond`: validation, the null condition, expand / cat / where, networks,
ScoreModel and guidance on a Cond against the label calls, and a class-conditional run made before
Cond (tests/fixtures/cond_run) loading, sampling and retraining bit for bit
(tests/fixtures/cond_pinned/make_cond_pinned.py)."""
import dataclasses
import importlib.util
import os

import pytest
import torch
from safetensors.torch import load_file

import scoresde as ss
from scoresde.models.conditioning import Cond, as_cond
from scoresde.models.guidance import classifier_free_score
from scoresde.training.losses import conditional_dsm_loss, label_dropout
from scoresde.nets import get_model
from problems import TESTS

HERE = str(TESTS)
_spec = importlib.util.spec_from_file_location("make_cond_pinned",
                                               os.path.join(HERE, "fixtures", "cond_pinned", "make_cond_pinned.py"))
mp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mp)
PINNED = load_file(mp.OUTPUTS)
K = 4


def assert_pinned(got: dict) -> None:
    assert got, "nothing computed"
    bad = [k for k, v in got.items()
           if v.dtype != PINNED[k].dtype or v.shape != PINNED[k].shape or not torch.equal(v, PINNED[k])]
    assert bad == [], f"{len(bad)} of {len(got)} pinned values changed: {bad}"


UNET = dict(data_shape=(1, 8, 8), ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
NETS = {"mlp": dict(data_shape=(2,), width=16, depth=1), "ddpm_unet": dict(UNET, num_groups=8), "ncsnpp": UNET,
        "dit": dict(data_shape=(1, 8, 8), depth=2, hidden_size=32, num_heads=2, patch_size=2)}


def labelled_model(name="mlp", seed=0):
    """A ScoreModel on a class-conditional network with random (non-zero) weights."""
    torch.manual_seed(seed)
    net = get_model(name, num_classes=K, **NETS[name]).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ss.ScoreModel(net, ss.VPSDE())


# --- the run made before Cond: loads, samples, trains as it did ----------------------------------------
def test_old_label_run_samples_and_forwards_bit_for_bit(tmp_path):
    assert_pinned(mp.guided_samples(mp.COND_RUN))
    assert_pinned(mp.forwards(mp.COND_RUN))
    assert_pinned(mp.cli_samples(mp.COND_RUN, str(tmp_path)))


def test_old_label_run_through_cond_bit_for_bit():
    model, sde = ss.load(mp.COND_RUN, verify=False)
    y = torch.arange(mp.B) % K
    for sampler in ("euler_maruyama", "ddim", "dpm_solver"):
        for w in (0.0, 1.0, 3.0):
            x = sde.sample(classifier_free_score(model, Cond(labels=y), w), mp.B, sampler=sampler, steps=8,
                           generator=torch.Generator().manual_seed(11))
            assert torch.equal(x, PINNED[f"cfg/{sampler}/{w:g}"]), (sampler, w)
    x = sde.sample(classifier_free_score(model, Cond(labels=2), 2.0), mp.B, sampler="ddim", steps=8,
                   generator=torch.Generator().manual_seed(12))                 # a batch-1 Cond, broadcast
    assert torch.equal(x, PINNED["cfg/int_label"])
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(mp.B, 2, generator=g), 0.05 + 0.9 * torch.rand(mp.B, generator=g)
    labels = torch.arange(mp.B) % (K + 1)
    with torch.no_grad():
        assert torch.equal(model(x, t, Cond(labels=labels)), PINNED["forward/score_y"])
        assert torch.equal(model(x, t, Cond()), PINNED["forward/score_none"])
        assert torch.equal(model.eps(x, t, Cond(labels=labels)), PINNED["forward/eps_y"])
        assert torch.equal(model.x0(x, t, cond=Cond(labels=labels)), PINNED["forward/x0_y"])
        assert torch.equal(model.net(x, 999 * t, Cond(labels=labels)), PINNED["forward/net_y"])
    x0, y = torch.randn(mp.B, 2, generator=g), torch.arange(mp.B) % K
    loss = conditional_dsm_loss(model, sde, x0, Cond(labels=y), p_uncond=0.3,
                                generator=torch.Generator().manual_seed(4), per_sample=True)
    assert torch.equal(loss.detach(), PINNED["loss/conditional_dsm"])
    dropped = label_dropout(Cond(labels=y), 0.3, K, torch.Generator().manual_seed(5))
    assert isinstance(dropped, Cond) and torch.equal(dropped.labels, PINNED["loss/label_dropout"])


def test_old_label_run_retrains_bit_for_bit(tmp_path):
    mp.train_cond_run(str(tmp_path / "run"))
    name = "ckpt_00000020.safetensors"
    got, want = load_file(str(tmp_path / "run" / "checkpoints" / name)), load_file(os.path.join(mp.COND_RUN,
                                                                                                 "checkpoints", name))
    assert sorted(got) == sorted(want)
    assert [k for k in want if not torch.equal(got[k], want[k])] == []


# --- the container --------------------------------------------------------------------------------------
def text(B=2, L=3, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[:, -1] = False                                                   # one padding token per row
    return torch.randn(B, L, D, generator=g), mask


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(labels=torch.zeros(2)), TypeError, r"labels: expected a \(B,\) integer tensor .* found dtype torch.float32"),
    (dict(labels=torch.zeros(2, 1, dtype=torch.long)), ValueError, r"labels: expected .* found shape \(2, 1\)"),
    (dict(labels=[1, 2]), TypeError, "labels: expected .* found list"),
    (dict(context=torch.zeros(2, 3)), ValueError, r"context: expected a \(B, L, D\) .* found shape \(2, 3\)"),
    (dict(context=torch.zeros(2, 3, 4, dtype=torch.long)), TypeError, "context: expected .* found dtype torch.int64"),
    (dict(context=torch.zeros(2, 3, 4), context_mask=torch.ones(2, 3)), TypeError,
     "context_mask: expected a .* bool tensor .* found dtype torch.float32"),
    (dict(context=torch.zeros(2, 3, 4), context_mask=torch.ones(2, 4, dtype=torch.bool)), ValueError,
     r"context_mask: expected shape \(2, 3\)"),
    (dict(context_mask=torch.ones(2, 3, dtype=torch.bool)), ValueError, "context_mask: expected together with context"),
    (dict(image=torch.zeros(2)), ValueError, r"image: expected .* found shape \(2,\)"),
    (dict(image_level=0.5), ValueError, "image_level: expected together with image"),
    (dict(image=torch.zeros(2, 1, 4, 4), image_level=torch.zeros(2, dtype=torch.long)), TypeError,
     "image_level: expected .* found dtype torch.int64"),
    (dict(labels=torch.zeros(3, dtype=torch.long), context=torch.zeros(2, 3, 4)), ValueError,
     "Cond: expected one batch size B for every field, found labels 3, context 2"),
])
def test_cond_validation_names_field_expected_found(kwargs, error, match):
    with pytest.raises(error, match=match):
        Cond(**kwargs)


def test_cond_fields_batch_to_expand():
    ctx, mask = text(1)
    c = Cond(labels=3, context=ctx, context_mask=mask, image=torch.zeros(1, 1, 4, 4), image_level=0.25)
    assert c.keys() == ("labels", "context", "context_mask", "image", "image_level") and c.batch_size == 1
    assert c.labels.dtype == torch.long and torch.equal(c.labels, torch.tensor([3]))
    assert torch.equal(c.image_level, torch.tensor([0.25]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.labels = torch.tensor([1])                                      # immutable
    e = c.expand(5)
    assert e.batch_size == 5 and torch.equal(e.labels, torch.full((5,), 3)) and torch.equal(e.context[4], ctx[0])
    assert c.expand(1) is c and Cond().expand(7).batch_size is None
    with pytest.raises(ValueError, match=r"cond: expected a batch of 1 or 4 \(the batch of x\), found 5"):
        e.expand(4)
    d = c.to(torch.float64)
    assert d.context.dtype == d.image.dtype == d.image_level.dtype == torch.float64
    assert d.labels.dtype == torch.long and d.context_mask.dtype == torch.bool
    assert c.to("cpu").device == torch.device("cpu") and Cond().device is None and Cond().batch_size is None
    assert "labels=(1,)" in repr(c)


def test_null_like_and_is_null():
    ctx, mask = text(2)
    img, lvl = torch.randn(2, 1, 4, 4), torch.tensor([0.1, 0.7])
    c = Cond(labels=torch.tensor([0, 2]), context=ctx, context_mask=mask, image=img, image_level=lvl)
    n = c.null_like(K)
    assert torch.equal(n.labels, torch.full((2,), K))                    # the network's null label index
    assert torch.equal(n.context, torch.zeros_like(ctx)) and not n.context_mask.any()    # no token
    assert n.image is img and n.image_level is lvl                        # the image condition is kept
    assert torch.equal(n.is_null(K), torch.ones(2, dtype=torch.bool))
    assert torch.equal(c.is_null(K), torch.zeros(2, dtype=torch.bool))
    assert torch.equal(Cond(context=ctx).null_like().context_mask, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(Cond(context=ctx).is_null(), torch.zeros(2, dtype=torch.bool))     # no mask: all tokens
    assert bool(Cond().is_null()) and Cond().null_like().keys() == ()
    assert Cond(image=img).null_like().image is img and bool(Cond(image=img).is_null().all())
    with pytest.raises(ValueError, match="num_classes: expected the network's null label index K"):
        Cond(labels=torch.tensor([1])).null_like()
    with pytest.raises(ValueError, match="num_classes"):
        Cond(labels=torch.tensor([1])).is_null()


def test_cat_and_where():
    ctx, mask = text(2)
    a = Cond(labels=torch.tensor([0, 1]), context=ctx, context_mask=mask)
    b = a.null_like(K)
    ab = Cond.cat(a, b)
    assert ab.batch_size == 4 and torch.equal(ab.labels, torch.tensor([0, 1, K, K]))
    assert torch.equal(ab.context[:2], ctx) and torch.equal(ab.context_mask[2:], torch.zeros(2, 3, dtype=torch.bool))
    no_mask = Cond.cat(Cond(context=ctx), Cond(context=ctx, context_mask=mask))   # a missing mask counts as all True
    assert torch.equal(no_mask.context_mask[:2], torch.ones(2, 3, dtype=torch.bool))
    keep = torch.tensor([True, False])
    w = a.where(keep, b)                                                  # torch.where(keep, a, b) row-wise
    assert torch.equal(w.labels, torch.tensor([0, K])) and torch.equal(w.context[0], ctx[0])
    assert torch.equal(w.context[1], torch.zeros(3, 4)) and not w.context_mask[1].any()
    with pytest.raises(ValueError, match=r"conds: expected the same fields in every Cond, found \('labels',\) and"):
        Cond.cat(Cond(labels=torch.tensor([1])), Cond(labels=torch.tensor([1]), context=ctx[:1]))
    with pytest.raises(ValueError, match=r"context: expected the same shape after the batch in every Cond"):
        Cond.cat(Cond(context=ctx), Cond(context=torch.zeros(2, 5, 4)))
    with pytest.raises(ValueError, match=r"keep: expected a \(2,\) bool tensor"):
        a.where(torch.tensor([1, 0]), b)
    with pytest.raises(ValueError, match="other: expected a Cond of batch 2, found 1"):
        a.where(keep, Cond(labels=torch.tensor([K]), context=ctx[:1], context_mask=mask[:1]))
    with pytest.raises(TypeError, match="other: expected Cond objects"):
        a.where(keep, torch.tensor([K, K]))


def test_as_cond():
    y = torch.tensor([1, 2])
    assert as_cond(None) is None and as_cond(Cond()) is None               # Cond() is the unconditional call
    assert torch.equal(as_cond(y).labels, y) and torch.equal(as_cond(y=y).labels, y)
    assert torch.equal(as_cond(3).labels, torch.tensor([3]))
    with pytest.raises(TypeError, match="y: the former label keyword and cond exclude each other"):
        as_cond(y, y)
    with pytest.raises(TypeError, match="cond: expected a Cond, class labels"):
        as_cond("cat")


# --- networks and ScoreModel ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "ddpm_unet", "ncsnpp", "dit"])
def test_network_with_cond_equals_the_label_call(name):
    net = labelled_model(name).net
    x = torch.randn(3, *net.data_shape)
    c, y = torch.tensor([3.0, 200.0, 900.0]), torch.tensor([0, 3, K])
    with torch.no_grad():
        old = net(x, c, y)
        assert torch.equal(net(x, c, Cond(labels=y)), old)
        assert torch.equal(net(x, c, Cond()), net(x, c)) and torch.equal(net(x, c), net(x, c, torch.full((3,), K)))
        assert not torch.equal(net(x, c, torch.tensor([1, 1, 1])), old)
    with pytest.raises(ValueError, match=r"cond: this .* reads class labels only, found fields \['context'\]"):
        net(x, c, Cond(labels=y, context=torch.zeros(3, 2, 4)))
    with pytest.raises(ValueError, match=r"cond.labels: expected labels in \[0, 4\]"):
        net(x, c, Cond(labels=torch.tensor([0, 1, 5])))
    with pytest.raises(ValueError, match=r"cond.labels: expected shape \(3,\)"):
        net(x, c, Cond(labels=torch.tensor([0, 1])))


def test_unconditional_network_refuses_cond_labels():
    net = get_model("mlp", data_shape=(2,), width=8, depth=1)
    x, c = torch.randn(2, 2), torch.zeros(2)
    with pytest.raises(ValueError, match=r"cond.labels: this MLP is unconditional .* or pass cond=None"):
        net(x, c, Cond(labels=torch.tensor([0, 1])))
    assert torch.equal(net(x, c, Cond()), net(x, c))
    model = ss.ScoreModel(net, ss.VPSDE())
    assert torch.equal(model(x, 0.5, Cond()), model(x, 0.5))                 # Cond() = None: called as net(x, c)


def test_score_model_takes_cond_labels_and_the_former_calls():
    model = labelled_model()
    x, t, y = torch.randn(3, 2), torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0, 2, 1])
    with torch.no_grad():
        ref = model(x, t, Cond(labels=y))
        for out in (model(x, t, y), model(x, t, y=y), model(x, t, cond=y), model(x, t, cond=Cond(labels=y))):
            assert torch.equal(out, ref)
        two = model(x, t, Cond(labels=torch.full((3,), 2)))
        assert torch.equal(model(x, t, 2), two) and torch.equal(model(x, t, Cond(labels=2)), two)   # broadcast
        assert torch.equal(model.eps(x, t, y=y), model.eps(x, t, Cond(labels=y)))
        assert torch.equal(model.x0(x, t, y), model.x0(x, t, Cond(labels=y)))
        assert torch.equal(model(x, t), model(x, t, Cond(labels=torch.full((3,), K))))               # None = null
    with pytest.raises(TypeError, match="y: the former label keyword and cond exclude each other"):
        model(x, t, y, y=y)
    with pytest.raises(ValueError, match=r"cond: expected a batch of 1 or 3 \(the batch of x\), found 2"):
        model(x, t, Cond(labels=torch.tensor([0, 1])))


# --- guidance and training ----------------------------------------------------------------------------
def test_classifier_free_score_with_cond_equals_labels_bit_for_bit():
    model = labelled_model()
    x, y = torch.randn(6, 2), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        for t in (0.3, torch.linspace(0.1, 0.9, 6)):
            for w in (0.0, 1.0, 2.5):
                ref = classifier_free_score(model, y, w)(x, t)
                assert torch.equal(classifier_free_score(model, Cond(labels=y), w)(x, t), ref)
                assert torch.equal(classifier_free_score(model, Cond(labels=y), w,
                                                         uncond=Cond(labels=torch.full((6,), K)))(x, t), ref)
            assert torch.equal(classifier_free_score(model, Cond(labels=1), 2.0)(x, t),
                               classifier_free_score(model, 1, 2.0)(x, t))
    with pytest.raises(ValueError, match=r"y: expected labels in \[0, 3\]"):
        classifier_free_score(model, Cond(labels=torch.tensor([K])), 1.0)        # the null label is no class
    with pytest.raises(TypeError, match="uncond: expected a Cond"):
        classifier_free_score(model, y, 1.0, uncond=torch.full((6,), K))


class TextScore:
    """A toy text-conditional score: s(x, t, cond) = -x + (mean of the unmasked context tokens)[:D];
    no token -> -x. Called as score_fn(x, t, cond) with a Cond (context, context_mask)."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond):
        self.calls.append(cond.batch_size)
        m = cond.context_mask.unsqueeze(-1).to(x.dtype)
        mean = (cond.context * m).sum(1) / m.sum(1).clamp(min=1)
        return -x + mean[:, : x.shape[1]]


def test_classifier_free_score_on_a_text_condition_uses_null_like():
    fn, (ctx, mask) = TextScore(), text(1, L=3, D=2)
    x = torch.randn(5, 2)
    cond = Cond(context=ctx, context_mask=mask)                            # one prompt for the batch
    for w in (0.0, 1.0, 4.0):
        fn.calls.clear()
        s = classifier_free_score(fn, cond, w)(x, 0.5)                     # no num_classes needed
        assert fn.calls == [10]                                            # one batched call [cond; null]
        prompt = ctx[0, :2].mean(0)
        torch.testing.assert_close(s, -x + w * prompt)                     # null = no token -> -x
    neg = Cond(context=torch.ones(1, 3, 2), context_mask=mask)            # a negative prompt as uncond
    torch.testing.assert_close(classifier_free_score(fn, cond, 3.0, uncond=neg)(x, 0.5),
                               -x + 1.0 + 3.0 * (ctx[0, :2].mean(0) - 1.0))


def test_dropout_and_conditional_loss_on_cond():
    y = torch.arange(1000) % K
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(label_dropout(Cond(labels=y), 0.3, K, g1).labels, label_dropout(y, 0.3, K, g2))
    ctx, _ = text(1000, L=2, D=3)
    img = torch.randn(1000, 1, 2, 2)
    c = Cond(labels=y, context=ctx, image=img)
    d = label_dropout(c, 0.3, K, torch.Generator().manual_seed(2))
    dropped = d.is_null(K)
    assert 0.25 < dropped.double().mean() < 0.35
    assert torch.equal(d.labels == K, dropped) and torch.equal(d.context_mask.any(1), ~dropped)
    assert torch.equal(d.context[dropped], torch.zeros_like(ctx[dropped])) and torch.equal(d.context[~dropped],
                                                                                             ctx[~dropped])
    assert torch.equal(d.image, img)                                      # the image condition is never dropped
    assert label_dropout(Cond(context=ctx), 1.0, None).context_mask.any().item() is False   # no K for text
    # the conditional loss on Cond(labels) is the label loss bit for bit
    model, sde = labelled_model(), ss.VPSDE()
    x0, yb = torch.randn(8, 2), torch.arange(8) % K
    a = conditional_dsm_loss(model, sde, x0, yb, p_uncond=0.5, generator=torch.Generator().manual_seed(3),
                             per_sample=True)
    b = conditional_dsm_loss(model, sde, x0, Cond(labels=yb), p_uncond=0.5, generator=torch.Generator().manual_seed(3),
                             per_sample=True)
    assert torch.equal(a, b)
    fn = TextScore()                                                      # and works on a text condition
    loss = conditional_dsm_loss(fn, sde, x0, Cond(context=ctx[:1], context_mask=torch.ones(1, 2, dtype=torch.bool)),
                                p_uncond=0.2, generator=torch.Generator().manual_seed(4))
    assert loss.ndim == 0 and torch.isfinite(loss) and fn.calls == [8]


def test_cond_is_public():
    assert ss.Cond is Cond and "Cond" in ss.__all__


def test_pooled_and_micro_fields():
    """SDXL's extra inputs: `pooled` (B, P) and `micro` (B, M), validated and carried by expand / cat / where /
    to; null_like zeros pooled (SDXL's force_zeros_for_empty_prompt) and keeps micro (the same sizes in both
    branches, as diffusers' default negative time_ids)."""
    ctx, _ = text(2)
    pooled, micro = torch.randn(2, 6), torch.tensor([[16.0, 16, 0, 0, 16, 16]]).expand(2, -1)
    c = Cond(context=ctx, pooled=pooled, micro=micro)
    assert c.keys() == ("context", "pooled", "micro") and c.batch_size == 2
    n = c.null_like()
    assert torch.equal(n.pooled, torch.zeros(2, 6)) and n.micro is micro and torch.equal(n.context, torch.zeros_like(ctx))
    both = Cond.cat(c, n)
    assert torch.equal(both.pooled[:2], pooled) and torch.equal(both.micro[2:], micro)
    w = c.where(torch.tensor([False, True]), n)
    assert torch.equal(w.pooled[0], torch.zeros(6)) and torch.equal(w.pooled[1], pooled[1])
    one = Cond(context=ctx[:1], pooled=pooled[:1], micro=micro[:1]).expand(3)
    assert one.pooled.shape == (3, 6) and one.micro.shape == (3, 6)
    assert c.to(torch.float64).pooled.dtype == c.to(torch.float64).micro.dtype == torch.float64
    assert torch.equal(n.is_null(), torch.ones(2, dtype=torch.bool))           # pooled and micro do not count
    for kwargs, error, match in [
            (dict(pooled=torch.zeros(2)), ValueError, r"pooled: expected a \(B, P\) .* found shape \(2,\)"),
            (dict(micro=torch.zeros(2, 6, dtype=torch.long)), TypeError, "micro: expected .* found dtype torch.int64"),
            (dict(context=ctx, pooled=torch.zeros(3, 6)), ValueError, "found context 2, pooled 3")]:
        with pytest.raises(error, match=match):
            Cond(**kwargs)
    with pytest.raises(ValueError, match=r"conds: expected the same fields in every Cond"):
        Cond.cat(c, Cond(context=ctx))

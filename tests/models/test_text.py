"""Cross-attention (models/nets/attention.py, the U-Net's spatial transformers, DiT's PixArt cross-attention)
and text encoders (models/text.py): masks against the closed form, the null condition, no NaN, prompts that
change the output, word order."""
import math

import pytest
import torch

import scoresde as ss
from scoresde.models.conditioning import Cond
from scoresde.models.nets.attention import CrossAttention, SpatialTransformer, masked_attention
from scoresde.models.text import TextEncoder, TransformerTextEncoder, build_text_encoder, check_prompts
from scoresde.data.tokenizer import OutOfVocabularyError

UNET = dict(ch=16, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0, num_groups=4)
DIT = dict(patch_size=2, hidden_size=32, depth=2, num_heads=4)


def _jitter(module, scale=0.05, seed=0):
    """Move every parameter off its initialisation (zero-initialised outputs would hide the conditioning)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _net(name, **kw):
    torch.manual_seed(0)
    extra = UNET if name == "ddpm_unet" else DIT
    return _jitter(ss.get_model(name, data_shape=(1, 8, 16), context_dim=12, **extra, **kw)).double()


# --- attention ---------------------------------------------------------------------------------------------------
def test_masked_attention_is_the_softmax_over_the_unmasked_keys_and_zero_for_empty_rows():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.tensor([[1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool).view(3, 5)
    mask[1] = False                                                       # a row without a token
    out = masked_attention(q, k, v, mask)
    for b in range(3):
        keep = mask[b]
        if not keep.any():
            assert torch.equal(out[b], torch.zeros_like(out[b]))
            continue
        # softmax(q k^T / sqrt(d)) v over the kept keys
        w = torch.softmax(q[b] @ k[b][:, keep].transpose(-1, -2) / math.sqrt(4), dim=-1)
        torch.testing.assert_close(out[b], w @ v[b][:, keep])
    torch.testing.assert_close(masked_attention(q, k, v, None), masked_attention(q, k, v, torch.ones(3, 5).bool()))


def test_all_masked_rows_give_no_nan_and_finite_gradients():
    torch.manual_seed(0)
    attn = _jitter(CrossAttention(8, 2, context_dim=6))
    x = torch.randn(2, 4, 8, requires_grad=True)
    ctx = torch.randn(2, 3, 6, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[0, 1] = True
    out = attn(x, ctx, mask)
    assert torch.isfinite(out).all() and torch.equal(out[1], torch.zeros_like(out[1]))   # bias included: adds 0
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(ctx.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_padded_tokens_do_not_matter():
    torch.manual_seed(0)
    attn = _jitter(CrossAttention(8, 2, context_dim=6))
    x, ctx = torch.randn(2, 4, 8), torch.randn(2, 3, 6)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    other = ctx.clone()
    other[~mask] = 1e3 * torch.randn(int((~mask).sum()), 6)
    torch.testing.assert_close(attn(x, ctx, mask), attn(x, other, mask))
    assert not torch.allclose(attn(x, ctx, mask), attn(x, ctx, torch.ones_like(mask)))


def test_spatial_transformer_starts_as_the_identity_and_keeps_shapes():
    torch.manual_seed(0)
    st = SpatialTransformer(8, context_dim=6, heads=2, depth=2, num_groups=4)
    x, ctx = torch.randn(2, 8, 4, 5), torch.randn(2, 3, 6)
    torch.testing.assert_close(st(x, ctx), x)                     # proj_out zero-initialised (LDM's zero_module)
    _jitter(st)
    assert st(x, ctx).shape == x.shape and not torch.allclose(st(x, ctx), x)


# --- networks with a context -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ddpm_unet", "dit"])
def test_net_reads_the_context_and_its_mask(name):
    net = _net(name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 16, generator=g, dtype=torch.float64)
    c = torch.tensor([10.0, 500.0, 900.0], dtype=torch.float64)
    ctx = torch.randn(3, 5, 12, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = net(x, c, Cond(context=ctx, context_mask=mask))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the null condition (no token) attends to nothing: the output of the network called without a context
    torch.testing.assert_close(out[1], net(x, c)[1])
    torch.testing.assert_close(net(x, c, Cond(context=ctx, context_mask=torch.zeros_like(mask))), net(x, c))
    torch.testing.assert_close(net(x, c, Cond(context=ctx).null_like()), net(x, c))
    # a different context changes the output; padding does not
    assert (out[0] - net(x, c, Cond(context=ctx.flip(1), context_mask=mask))[0]).abs().max() > 1e-6
    padded = ctx.clone()
    padded[0, 3:] = 7.0
    torch.testing.assert_close(net(x, c, Cond(context=padded, context_mask=mask)), out)
    # rebuilt from its config: the same architecture
    again = ss.get_model(name, **net.config)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name", ["ddpm_unet", "dit"])
def test_net_context_errors_name_the_field(name):
    net = _net(name)
    x, c = torch.randn(2, 1, 8, 16, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"cond.context: expected shape \(2, L, 12\)"):
        net(x, c, Cond(context=torch.randn(2, 3, 5, dtype=torch.float64)))
    plain = ss.get_model(name, data_shape=(1, 8, 16), **(UNET if name == "ddpm_unet" else DIT)).double()
    with pytest.raises(ValueError, match=r"cond: this .* reads class labels only, found fields \['context'\]; build it with context_dim"):
        plain(x, c, Cond(context=torch.randn(2, 3, 12, dtype=torch.float64)))


def test_nets_without_context_dim_keep_their_config_and_weights():
    for name, kw in [("ddpm_unet", UNET), ("dit", DIT)]:
        net = ss.get_model(name, data_shape=(1, 8, 16), **kw)
        assert not any("context" in k for k in net.config)
        assert not any("cross_attn" in k or "attn2" in k for k in net.state_dict())
    dit = ss.get_model("dit", data_shape=(1, 8, 16), context_dim=12, **DIT)
    assert torch.equal(dit(torch.randn(2, 1, 8, 16), torch.ones(2), Cond(context=torch.randn(2, 3, 12))),
                       torch.zeros(2, 1, 8, 16))                  # PixArt: a new network outputs exactly zero


def test_unet_places_spatial_transformers_at_the_chosen_resolutions():
    def count(**kw):
        net = ss.get_model("ddpm_unet", data_shape=(1, 8, 16), context_dim=12, **UNET, **kw)
        return sum(isinstance(m, SpatialTransformer) for m in net.modules())
    assert count() == 1                                          # default: the middle block only
    assert count(context_resolutions=[4]) == 1 + 2 + 1           # the lowest resolution: 1 down, 2 up, the middle
    assert count(context_resolutions=[8, 4]) == 1 + 1 + 2 + 2 + 1
    net = ss.get_model("ddpm_unet", data_shape=(1, 8, 16), context_dim=12, transformer_depth=2, **UNET)
    assert net.config["transformer_depth"] == 2 and len(net.mid[1].blocks) == 2



def test_unet_context_pool_adds_the_projected_mean_of_the_tokens_to_the_time_embedding():
    net = _net("ddpm_unet", context_pool=True)
    assert net.config["context_pool"] is True and "context_pool" not in _net("ddpm_unet").config
    g = torch.Generator().manual_seed(2)
    ctx = torch.randn(3, 5, 12, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    W, b = net.pool.weight, net.pool.bias
    want = torch.stack([W @ ctx[0, :2].mean(0) + b, torch.zeros_like(b), W @ ctx[2].mean(0) + b])
    torch.testing.assert_close(net._pooled(ctx, mask), want)                 # masked mean, projected; none: 0
    # the network: the pooled vector goes where a class embedding goes (every residual block sees it) ...
    x = torch.randn(3, 1, 8, 16, generator=g, dtype=torch.float64)
    c = torch.tensor([10.0, 500.0, 900.0], dtype=torch.float64)
    out = net(x, c, Cond(context=ctx, context_mask=mask))
    torch.testing.assert_close(out[1], net(x, c)[1])                        # a row without a token: the null condition
    padded = ctx.clone()
    padded[0, 2:] = 7.0
    torch.testing.assert_close(net(x, c, Cond(context=padded, context_mask=mask)), out)       # padding does not matter
    with torch.no_grad():
        net.pool.weight.zero_(), net.pool.bias.zero_()
    assert (out[0] - net(x, c, Cond(context=ctx, context_mask=mask))[0]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="context_pool: .* needs context_dim=D, found context_dim=None"):
        ss.get_model("ddpm_unet", data_shape=(1, 8, 16), context_pool=True, **UNET)
    with pytest.raises(TypeError, match="context_pool: expected a bool"):
        ss.get_model("ddpm_unet", data_shape=(1, 8, 16), context_dim=12, context_pool=1, **UNET)

def test_spatial_transformer_pos_adds_the_fixed_sincos_embedding_of_each_place():
    from scoresde.models.nets.attention import sincos_pos_embed_2d
    torch.manual_seed(0)
    plain = _jitter(SpatialTransformer(12, context_dim=6, heads=2, num_groups=4)).double()
    placed = SpatialTransformer(12, context_dim=6, heads=2, num_groups=4, pos=True).double()
    placed.load_state_dict(plain.state_dict())                               # no parameters added: loads as is
    x = torch.ones(2, 12, 3, 5, dtype=torch.float64)                          # every place alike
    ctx = torch.randn(2, 4, 6, dtype=torch.float64)
    same = plain(x, ctx)
    torch.testing.assert_close(same, same[..., :1, :1].expand_as(same))       # without it: nothing tells places apart
    out = placed(x, ctx)
    assert (out - out[..., :1, :1]).abs().amax(dim=(0, 1)).min() == 0.0        # the top-left place is itself ...
    assert (out - out[..., :1, :1]).abs().amax(dim=(0, 1))[1:, 1:].min() > 1e-6   # ... every other one differs
    # the closed form: the embedding is added to the tokens after proj_in
    emb = sincos_pos_embed_2d(12, 3, 5)
    rows, cols = torch.meshgrid(torch.arange(3.0), torch.arange(5.0), indexing="ij")
    rows, cols = rows.reshape(-1).double(), cols.reshape(-1).double()
    w = 10000.0 ** (-torch.arange(3, dtype=torch.float64) / 3)                # 12 / 4 frequencies
    torch.testing.assert_close(emb, torch.cat([torch.sin(cols[:, None] * w), torch.cos(cols[:, None] * w),
                                               torch.sin(rows[:, None] * w), torch.cos(rows[:, None] * w)], 1))
    h = plain.proj_in(plain.norm(x).flatten(2).transpose(1, 2)) + emb
    for block in plain.blocks:
        h = block(h, ctx, None)
    torch.testing.assert_close(out, x + plain.proj_out(h).transpose(1, 2).reshape(2, 12, 3, 5))
    odd = SpatialTransformer(10, context_dim=6, heads=2, num_groups=2, pos=True).double()
    assert odd._pos_embed(3, 5, torch.zeros(1, 15, 10, dtype=torch.float64))[:, 8:].abs().max() == 0  # width 10: 2 zero
    with pytest.raises(TypeError, match="pos: expected a bool"):
        SpatialTransformer(12, context_dim=6, pos=1)


def test_unet_context_pos_reaches_every_spatial_transformer_and_the_config():
    net = _net("ddpm_unet", context_pos=True, context_resolutions=[8])
    assert net.config["context_pos"] is True and "context_pos" not in _net("ddpm_unet").config
    xs = [m for m in net.modules() if isinstance(m, SpatialTransformer)]
    assert len(xs) >= 3 and all(m.pos for m in xs)
    plain = _net("ddpm_unet", context_resolutions=[8])
    plain.load_state_dict(net.state_dict())
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 1, 8, 16, generator=g, dtype=torch.float64), torch.randn(2, 3, 12, generator=g,
                                                                                   dtype=torch.float64)
    c = torch.tensor([10.0, 500.0], dtype=torch.float64)
    assert (net(x, c, Cond(context=ctx)) - plain(x, c, Cond(context=ctx))).abs().max() > 1e-6
    with pytest.raises(ValueError, match="context_pos: .* needs context_dim=D, found context_dim=None"):
        ss.get_model("ddpm_unet", data_shape=(1, 8, 16), context_pos=True, **UNET)


# --- text encoders -----------------------------------------------------------------------------------------------
def _encoder(**kw):
    torch.manual_seed(0)
    return TransformerTextEncoder(**{"context_dim": 16, "max_len": 24, "depth": 2, "heads": 2, **kw}).double()


def test_encoder_outputs_context_and_mask_of_the_interface():
    enc = _encoder()
    cond = enc.encode(["three left of eight", "", "a" * 40])
    assert isinstance(enc, TextEncoder) and enc.context_dim == 16
    assert cond.context.shape == (3, 24, 16) and cond.context.dtype == torch.float64
    assert cond.context_mask.dtype == torch.bool
    assert cond.context_mask.sum(1).tolist() == [1 + 19, 1, 24]        # BOS + the bytes; truncated at max_len
    assert torch.isfinite(cond.context).all()
    null = enc.null(2)
    torch.testing.assert_close(null.context, enc.encode(["", ""]).context)
    torch.testing.assert_close(null.context[0], cond.context[1])
    assert null.context_mask.sum(1).tolist() == [1, 1]                 # the BOS token: a learned null token


def test_encoding_of_a_prompt_does_not_depend_on_the_rest_of_the_batch():
    enc = _encoder()
    alone = enc.encode(["one left of two"]).context[0]
    mixed = enc.encode(["a much longer prompt than the other", "one left of two"]).context[1]
    m = enc.encode(["one left of two"]).context_mask[0]
    torch.testing.assert_close(alone[m], mixed[m])


def test_word_order_matters_to_the_encoder():
    enc = _encoder()
    a, b = enc.encode(["three left of eight", "eight left of three"]).context
    # same characters, other order: a permutation-invariant summary (the sum over tokens) still differs
    assert (a.sum(0) - b.sum(0)).abs().max() > 1e-3


def test_a_new_encoder_already_tells_prompts_apart():
    """At initialisation the token states of two prompts differ as their tokens do (unit-scale embeddings): with
    GPT-2's 0.02 the residual branches swamped them (cosine 0.98 between any two prompts' states), so a jointly
    trained encoder carried no prompt for the first ~1/lr Adam steps."""
    torch.manual_seed(0)
    enc = TransformerTextEncoder(context_dim=64, max_len=24, depth=2, heads=4)
    with torch.no_grad():
        a, b = enc.encode(["three left of eight", "one right of zero"]).context[:, 1:6]
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)            # the same positions, other characters
    assert cos.mean() < 0.8, cos


def test_char_tokenizer_and_bad_prompts():
    enc = _encoder(tokenizer="char", alphabet=" abcdefghijklmnopqrstuvwxyz")
    assert enc.encode(["abc"]).context_mask.sum().item() == 4
    with pytest.raises(OutOfVocabularyError, match=r"prompt: character '7'"):
        enc.encode(["seven 7"])
    with pytest.raises(TypeError, match="prompt: expected a string or a list of strings, found int"):
        check_prompts(3)
    with pytest.raises(TypeError, match="prompt: expected strings, found an item of type int"):
        enc.encode(["a", 3])
    with pytest.raises(ValueError, match="prompt: expected a prompt or a non-empty list"):
        enc.encode([])
    with pytest.raises(ValueError, match="heads: expected a divisor of context_dim=16"):
        TransformerTextEncoder(16, heads=3)
    with pytest.raises(KeyError):
        build_text_encoder("clip-by-name")
    rebuilt = build_text_encoder("transformer", **enc.config())
    assert rebuilt.config() == enc.config()


def _text_model(name="ddpm_unet"):
    net = _net(name)
    model = ss.ScoreModel(net, ss.VPSDE(), text_encoder=_jitter(_encoder(context_dim=12, heads=2), seed=3))
    return model.double().eval()


def test_score_model_encodes_prompts_and_uses_the_null_prompt_without_one():
    model = _text_model()
    x = torch.randn(2, 1, 8, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    enc = model.text_encoder
    with torch.no_grad():
        s = model(x, t, "three left of eight")
        torch.testing.assert_close(s, model(x, t, enc.encode(["three left of eight"] * 2)))
        torch.testing.assert_close(model(x, t, ["a", "b"]), model(x, t, enc.encode(["a", "b"])))
        torch.testing.assert_close(model(x, t), model(x, t, enc.null(2)))      # cond=None: the trained null
        assert (s - model(x, t, "eight left of three")).abs().max() > 1e-6       # the prompt changes the score
        assert (s - model(x, t)).abs().max() > 1e-6
        torch.testing.assert_close(model.eps(x, t, "a"), -model.sde.marginal_coefs(t)[1].view(2, 1, 1, 1) * model(x, t, "a"))
    assert any(k.startswith("text_encoder.") for k in model.state_dict())      # saved with the model
    plain = ss.ScoreModel(_net("ddpm_unet"), ss.VPSDE())
    with pytest.raises(ValueError, match="cond: prompts need a text-conditional model"):
        plain(x.float(), t.float(), "a prompt")
    with pytest.raises(TypeError, match="text_encoder: expected a TextEncoder"):
        ss.ScoreModel(_net("ddpm_unet"), ss.VPSDE(), text_encoder=object())


def test_the_loss_trains_the_encoder_jointly():
    model = _text_model("dit").train()
    x0 = torch.randn(4, 1, 8, 16, dtype=torch.float64)
    loss = ss.dsm_loss(lambda x, t: model(x, t, ["one", "two", "", "three left of four"]), model.sde, x0,
                       generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad for p in model.text_encoder.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(gr.abs().sum() for gr in grads) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["ddpm_unet", "dit"])
def test_cross_attention_on_cuda_under_bf16_autocast(name):
    net = _net(name).float().cuda()
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(3, 1, 8, 16, device="cuda", generator=g)
    c = torch.tensor([10.0, 500.0, 900.0], device="cuda")
    ctx = torch.randn(3, 5, 12, device="cuda", generator=g, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool, device="cuda")
    with torch.autocast("cuda", torch.bfloat16):
        out = net(x, c, Cond(context=ctx, context_mask=mask))
        plain = net(x, c)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1].float(), plain[1].float(), atol=2e-2, rtol=2e-2)   # no token: no cross-attn
    out.float().square().sum().backward()
    assert torch.isfinite(ctx.grad).all() and all(torch.isfinite(p.grad).all() for p in net.parameters()
                                                  if p.grad is not None)

"""EMA with score_sde's warm-up rule against closed forms."""
import math

import pytest
import torch
from torch import nn

import scoresde as ss
from scoresde.models.ema import EMA


def toy(value=0.0):
    m = nn.Linear(3, 2)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(value)
    return m


def test_warmup_decay_values():
    ema = EMA(toy(), decay=0.9999)
    # decay_n = min(decay, (1 + n) / (10 + n)), n = 1, 2, ...
    assert [ema.current_decay(n) for n in (1, 2, 90)] == [2 / 11, 3 / 12, 91 / 100]
    assert ema.current_decay(10**6) == 0.9999  # capped once (1+n)/(10+n) > decay (n > 89991)
    assert EMA(toy(), decay=0.5).current_decay(1) == 2 / 11 and EMA(toy(), decay=0.1).current_decay(1) == 0.1
    assert EMA(toy(), decay=0.9, warmup=False).current_decay(1) == 0.9


@pytest.mark.parametrize("warmup", [True, False])
def test_constant_parameter_sequence_closed_form(warmup):
    # shadow_0 = s0, params constant v  =>  shadow_n = v + (s0 - v) prod_{k<=n} decay_k
    s0, v, decay, n = 1.0, -2.0, 0.95, 40
    model = toy(s0)
    ema = EMA(model, decay=decay, warmup=warmup)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(v)
    for _ in range(n):
        ema.update(model)
    prod = math.prod(min(decay, (1 + k) / (10 + k)) if warmup else decay for k in range(1, n + 1))
    for s in ema.shadow.values():
        torch.testing.assert_close(s, torch.full_like(s, v + (s0 - v) * prod), rtol=1e-6, atol=1e-6)
    assert ema.num_updates == n


def test_first_update_and_linear_sequence():
    # without warm-up, params p_n = n: shadow_n = decay shadow_{n-1} + (1 - decay) n
    model, decay = toy(0.0), 0.8
    ema = EMA(model, decay=decay, warmup=False)
    ref = 0.0
    for n in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(n))
        ema.update(model)
        ref = decay * ref + (1 - decay) * n
    torch.testing.assert_close(ema.shadow["weight"], torch.full((2, 3), ref))


def test_average_parameters_swaps_and_restores():
    model = toy(3.0)
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(5.0)
    ema.update(model)  # shadow = 0.5 * 3 + 0.5 * 5 = 4
    x = torch.ones(1, 3)
    with ema.average_parameters(model) as m:
        assert m is model
        torch.testing.assert_close(model(x), torch.full((1, 2), 4.0 * 3 + 4.0))
    torch.testing.assert_close(model.weight, torch.full((2, 3), 5.0))  # raw weights back
    # explicit store / copy_to / restore on a parameter iterable
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    assert torch.all(model.bias == 4.0)
    ema.restore(model.parameters())
    assert torch.all(model.bias == 5.0)
    with pytest.raises(RuntimeError, match="store"):
        ema.restore(model)


def test_state_dict_roundtrip_and_copy_to():
    model = toy(1.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model), ema.update(model)
    other = EMA(toy(0.0), decay=0.1, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert (other.decay, other.warmup, other.num_updates) == (0.9, True, 2)
    target = toy(-7.0)
    other.copy_to(target)
    torch.testing.assert_close(target.weight, ema.shadow["weight"])
    torch.testing.assert_close(target.bias, ema.shadow["bias"])


def test_ema_on_a_score_network_and_validation():
    net = ss.get_model("mlp", width=16, depth=1)
    ema = EMA(net)
    ema.update(net)  # unchanged params: shadow stays equal
    for k, p in net.named_parameters():
        torch.testing.assert_close(ema.shadow[k], p.detach())
    for bad in (1.0, -0.1, "0.9"):
        with pytest.raises(ValueError, match="decay"):
            EMA(net, decay=bad)
    with pytest.raises(ValueError, match="parameters differ"):
        ema.update(toy())

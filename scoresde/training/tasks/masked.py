"""Sequence tasks: masked diffusion language models and their autoregressive baseline.

`masked`: the continuous-time NELBO of absorbing-state diffusion (MDLM, Sahoo et al. 2024,
arXiv:2406.07524, eq. 10; LLaDA, Nie et al. 2025, arXiv:2502.09992, eq. 3) with stratified times,
`scoresde.discrete`; with `discrete.block_size` b > 0 block diffusion (BD3-LM, Arriola et al. 2025,
arXiv:2503.09573): a block-causal network trained on the sum over blocks of their NELBOs in one vectorised
pass over x_t (+) x_0. `autoregressive`: next-token cross-entropy of the same network made causal, the
baseline of the papers' comparisons. Both train on a built-in language, a text file or a `.npy` array of
token ids (`[data] name`), with the options of the `[discrete]` section; the tokenizer, the language and
the process go into the checkpoint metadata, so `scoresde.load` rebuilds the model.
"""
from __future__ import annotations

import os
import time
from typing import Any

import torch

from scoresde.training.tasks.base import TASKS, Task
from scoresde.sde.masked import SCHEDULES, MaskedProcess
from scoresde.sde.block_masked import BlockMaskedProcess, block_ranges
from scoresde.samplers.block import split_steps
from scoresde.samplers.masked import DISCRETE_SAMPLERS
from scoresde.models.nets import MODELS, get_model
from scoresde.data.tokens import TokenData, load_tokens, split_holdout, tokens_from_array
from scoresde._common.files import atomic_write_bytes
from scoresde.runs.plots import plot_texts, sample_metrics
from scoresde.samplers.core import describe_estimate
from scoresde.models.token_model import MaskedLM, AutoregressiveLM


__all__ = ["MaskedTask", "AutoregressiveTask"]


class _TokenTask(Task):
    """Data, network and hooks shared by the two sequence tasks."""

    net_name = ""
    sections = ("discrete",)

    @classmethod
    def check_config(cls, cfg: dict[str, Any]) -> None:
        MODELS[cfg["model"]["name"]], SCHEDULES[cfg["discrete"]["schedule"]]
        if cls is MaskedTask:
            DISCRETE_SAMPLERS[cfg["sample"]["sampler"]]
            b = cfg["discrete"]["block_size"]
            if b and cfg["model"].get("time_conditioning"):
                raise ValueError(f"discrete.block_size: block diffusion (block_size = {b}) takes no time input; "
                                 "found model.time_conditioning = true")
            if b and cfg["discrete"]["block_length"]:
                raise ValueError(f"discrete.block_length: a block diffusion model (block_size = {b}) samples its "
                                 "own blocks; leave block_length at 0")
        elif cfg["discrete"]["block_size"]:
            raise ValueError(f"discrete.block_size: block diffusion is a masked model (--task masked); task "
                             f"{cls.name!r} found block_size = {cfg['discrete']['block_size']}")
        if cfg["model"]["name"] != cls.net_name:
            raise ValueError(f"model.name: task {cls.name!r} trains a {cls.net_name} network, found "
                             f"{cfg['model']['name']!r}")

    # --- data and model ------------------------------------------------------------------------------
    def prepare(self) -> None:
        d, D = self.cfg["data"], self.cfg["discrete"]
        if isinstance(self.data, TokenData):
            tokens = self.data
        elif self.data is not None:
            tokens = tokens_from_array(self.data, seq_len=D["seq_len"], vocab_size=D["vocab_size"], eos_id=D["eos_id"])
        else:
            tokens = load_tokens(d["name"], seq_len=D["seq_len"], size=d["size"], seed=self.cfg["seed"],
                                 tokenizer=D["tokenizer"], text_mode=D["text_mode"], vocab_size=D["vocab_size"],
                                 eos_id=D["eos_id"], max_depth=D["max_depth"], digits=D["digits"])
        self.tokens = tokens
        n_hold = split_holdout(len(tokens), D["holdout"])
        self.x_train, self.x_hold = tokens.x[:len(tokens) - n_hold], tokens.x[len(tokens) - n_hold:]

    @property
    def example_numel(self) -> int:
        return self.tokens.seq_len

    def _net(self):
        kw = {k: v for k, v in self.cfg["model"].items() if k != "name"}
        V = self.tokens.vocab_size
        if self.cfg["discrete"]["block_size"]:
            kw["block_size"] = self.cfg["discrete"]["block_size"]
        return get_model(self.cfg["model"]["name"], **{**kw, "vocab_size": V + 1, "num_outputs": V,
                                                      "seq_len": self.tokens.seq_len})

    def build(self, device: torch.device) -> torch.nn.Module:
        self.model = self._make(self._net()).to(device)
        self.x_all = self.x_train.to(device)
        return self.model

    def meta(self) -> dict[str, Any]:
        t = self.tokens
        tok = {"vocab_size": t.vocab_size, "seq_len": t.seq_len, "eos_id": t.eos_id, "name": t.name,
               "tokenizer": t.tokenizer.config() if t.tokenizer else None,
               "language": t.language.config() if t.language else None}
        return {"model": {"name": self.cfg["model"]["name"], "config": self.model.net.config}, "sde": {},
                "tokens": tok, "data_shape": [t.seq_len], "data": {"name": t.name, "kind": "tokens"}}

    def _batch(self, data_gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(self.x_train), (self.cfg["train"]["batch_size"],), generator=data_gen)
        return self.x_all[idx.to(self.x_all.device)]

    # --- hooks -----------------------------------------------------------------------------------------
    def _sample_kw(self) -> dict[str, Any]:
        return {"temperature": self.cfg["discrete"]["temperature"]}

    def sample(self, model, generator, n, progress=False) -> torch.Tensor:
        """`n` sequences; with `progress` (the final draw) their count and the time they will take (one network
        call timed, times the calls of the sampler) are printed first."""
        if progress:
            self.estimate = self._estimate(model, n)
            self.say("final draw: " + describe_estimate(self.estimate, "sequences", "network calls"))
        return model.sample(n, generator=generator, progress=progress, **self._sample_kw()).cpu()

    def _estimate(self, model, n: int) -> dict[str, Any]:
        """`estimate_sampling`'s record for a token model: one call on n all-masked sequences, timed."""
        L = self.tokens.seq_len
        x = torch.full((n, L), self.tokens.vocab_size, dtype=torch.long, device=next(model.parameters()).device)
        with torch.no_grad():
            start = time.perf_counter()
            self._call(model, x)
            per_call = time.perf_counter() - start
        sampler, steps, calls = self._plan()
        return {"n": n, "sampler": sampler, "steps": steps, "nfe": calls, "seconds_per_call": per_call,
                "seconds": calls * per_call}

    def plot(self, x, path, title) -> None:
        texts, valid = self.model.decode(x), self.model.is_valid(x)
        atomic_write_bytes(os.path.splitext(path)[0] + ".txt", "".join(s + "\n" for s in texts).encode())
        plot_texts(texts, path, valid=valid, title=f"{self.tokens.name}: {title}")

    @property
    def eval_fields(self) -> tuple[str, ...]:
        if self.tokens.language is None:
            return ("bits_per_token",)
        return ("bits_per_token", "valid_fraction", "distinct_valid_fraction")

    def evaluate(self, model, generator) -> dict[str, float]:
        n = self.cfg["eval"]["n"]
        out = {}
        if len(self.x_hold):
            out["bits_per_token"] = float(self._nats(model, self.x_hold[:n], generator).mean()) / 0.6931471805599453
        if self.tokens.language is not None:
            m = self.final_metrics(self.sample(model, generator, n))
            out.update(valid_fraction=m["valid_fraction"], distinct_valid_fraction=m["distinct_valid_fraction"])
        return out

    def final_metrics(self, x) -> dict[str, Any]:
        return {**self.draw_metrics(), **sample_metrics(self.model, x)}


@TASKS.register("masked")
class MaskedTask(_TokenTask):
    """A masked diffusion language model trained by the continuous-time NELBO."""

    name, net_name = "masked", "seq_transformer"
    # the embedded default job (`scoresde train --task masked`): brackets of depth <= 3, length <= 16, on CPU
    defaults = {"model": {"name": "seq_transformer", "width": 64, "depth": 2, "heads": 4},
                "data": {"name": "brackets"},
                "train": {"steps": 2000, "batch_size": 64, "lr": 3e-3, "warmup": 100, "ema_decay": 0.999},
                "sample": {"sampler": "llada", "steps": 64, "n": 256}, "eval": {"n": 256}}

    def prepare(self) -> None:
        super().prepare()
        D = self.cfg["discrete"]
        self.process = (BlockMaskedProcess(self.tokens.vocab_size, D["block_size"], D["schedule"], D["eps"])
                        if D["block_size"] else MaskedProcess(self.tokens.vocab_size, D["schedule"], D["eps"]))

    def _make(self, net):
        return MaskedLM(net, self.process, self.tokens.tokenizer, self.tokens.eos_id, self.tokens.language)

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "process": self.process.config()}

    def loss(self, model, data_gen, noise_gen) -> torch.Tensor:
        D = self.cfg["discrete"]
        return self.process.loss(model, self._batch(data_gen), antithetic=D["antithetic"], estimator=D["loss"],
                                 generator=noise_gen, check=False)          # the data were checked when loaded

    def _sample_kw(self) -> dict[str, Any]:
        s, D = self.cfg["sample"], self.cfg["discrete"]
        kw = {"sampler": s["sampler"], "steps": s["steps"], "temperature": D["temperature"]}
        if s["sampler"] == "llada":
            kw.update(remasking=D["remasking"], block_length=D["block_length"], order_temperature=D["order_temperature"])
        elif s["sampler"] == "remdm":
            kw.update(eta=D["eta"], schedule=D["remdm_schedule"])
        return kw

    def _nats(self, model, x, generator) -> torch.Tensor:
        return model.nelbo(x, draws=self.cfg["discrete"]["eval_draws"], generator=generator)

    def _call(self, model, x) -> None:
        model(x, torch.ones(len(x), device=x.device))

    def _plan(self) -> tuple[str, int, int]:
        """(sampler, steps, network calls at most): mdlm / llada call only when a step reveals something (<= L),
        remdm at every step; block diffusion splits the steps over the blocks (at least one each)."""
        s, L, b = self.cfg["sample"], self.tokens.seq_len, self.cfg["discrete"]["block_size"]
        if b:
            per = split_steps(s["steps"], block_ranges(L, b))
            calls = sum(per) if s["sampler"] == "remdm" else sum(min(p, hi - lo) for p, (lo, hi)
                                                               in zip(per, block_ranges(L, b)))
            return s["sampler"], s["steps"], calls
        return s["sampler"], s["steps"], s["steps"] if s["sampler"] == "remdm" else min(s["steps"], L)


@TASKS.register("autoregressive")
class AutoregressiveTask(_TokenTask):
    """The autoregressive baseline: next-token cross-entropy of a causal transformer."""

    name, net_name = "autoregressive", "causal_transformer"
    defaults = {**MaskedTask.defaults, "model": {**MaskedTask.defaults["model"], "name": "causal_transformer"}}

    def _make(self, net):
        return AutoregressiveLM(net, self.tokens.vocab_size, self.tokens.tokenizer, self.tokens.eos_id,
                                self.tokens.language)

    def loss(self, model, data_gen, noise_gen) -> torch.Tensor:
        x = self._batch(data_gen)
        return torch.nn.functional.cross_entropy(model(x).float().transpose(1, 2), x)

    def _nats(self, model, x, generator) -> torch.Tensor:
        return model.nll(x)

    def _call(self, model, x) -> None:
        model(torch.zeros_like(x))

    def _plan(self) -> tuple[str, int, int]:
        L = self.tokens.seq_len
        return "autoregressive", L, L

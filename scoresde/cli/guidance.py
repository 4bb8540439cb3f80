"""What `scoresde sample` guides towards: a class (--label) or text prompts (--prompt, a grid of prompts x
samples), with --guidance, --negative-prompt and --guidance-rescale (classifier-free guidance, Ho & Salimans
2022, arXiv:2207.12598; guidance rescale, Lin et al. 2024, arXiv:2305.08891)."""
from __future__ import annotations

from scoresde.models.guidance import classifier_free_score


__all__ = ["Guidance", "parse_label"]


class Guidance:
    """What --label / --prompt / --guidance / --negative-prompt / --guidance-rescale ask, checked together."""

    def __init__(self, label: str | None, prompts: list[str], w: float | None, negative: str | None,
                 rescale: float | None):
        if label is not None and prompts:
            raise ValueError("--prompt: a model is guided by --label or by --prompt, found both")
        if w is not None and label is None and not prompts:
            raise ValueError("--guidance: expected --label too (the class to guide towards), or --prompt (a text "
                             "model), found neither")
        if negative is not None and not prompts:
            raise ValueError("--negative-prompt: expected --prompt too, found none")
        if rescale is not None and label is None and not prompts:
            raise ValueError("--guidance-rescale: expected --label or --prompt too (it rescales guidance), found neither")
        self.label, self.prompts, self.negative, self.rescale = label, prompts, negative, rescale or 0.0
        self.w = 1.0 if w is None else w

    def score(self, model, meta: dict, per_prompt: int = 1):
        """(score(b): the score function to sample the next batch of b with, its words for the title): the model's,
        the guided score of a class (--label), or of the grid's next b rows (each prompt `per_prompt` times, in
        order: a row of the grid per prompt)."""
        if self.prompts:
            if getattr(model, "text_encoder", None) is None:
                raise ValueError("--prompt: expected a text-conditional model (trained on captioned data), found one "
                                 "without a text encoder")
            words = f", prompts (rows) {' | '.join(repr(p) for p in self.prompts)}, w = {self.w:g}"
            return self._prompt_score(model, per_prompt), words + (f", rescale {self.rescale:g}" if self.rescale else "")
        if self.label is None:
            return (lambda b: model), ""
        y, name = parse_label(self.label, model, meta)
        f = classifier_free_score(model, y, self.w, guidance_rescale=self.rescale)
        return (lambda b: f), f", class {name}, w = {self.w:g}"

    def _prompt_score(self, model, per_prompt: int):
        rows = [p for p in self.prompts for _ in range(per_prompt)]

        def score(b: int):               # the next b rows of the grid
            batch = rows[:b]
            del rows[:b]
            return classifier_free_score(model, w=self.w, prompt=batch, negative_prompt=self.negative,
                                         guidance_rescale=self.rescale)
        return score


def parse_label(label: str, model, meta: dict) -> tuple[int, str]:
    """--label as a class index (or a class name of the training data) of a class-conditional model."""
    K = model.num_classes
    if K is None:
        raise ValueError("--label: expected a class-conditional model, found an unconditional one (train it with "
                         "--set model.num_classes=auto on labelled data)")
    classes = list(meta.get("data", {}).get("classes") or [])
    if label in classes:
        return classes.index(label), label
    if label.lstrip("-").isdigit() and 0 <= int(label) < K:
        return int(label), classes[int(label)] if int(label) < len(classes) else label
    hint = f" or a class name ({', '.join(classes[:12])}{', ...' if len(classes) > 12 else ''})" if classes else ""
    raise ValueError(f"--label: expected a class index in [0, {K}){hint}, found {label!r}")

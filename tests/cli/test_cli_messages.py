"""What the command line says: --dry-run checks values, not only key names; errors name the flag (--checkpoint,
--config, --prompt), never a Python argument; text outside a character model's vocabulary points at byte tokens."""
import json

from helpers import one_line_error, run


def test_dry_run_checks_the_model_values(tmp_path):
    one_line_error(run("train", "--set", "model.width=abc", "--dry-run"),
                   "config model.width: expected an integer, found 'abc'")
    one_line_error(run("train", "--set", "model.width=2.5", "--dry-run"), "config model.width: expected an integer")
    one_line_error(run("train", "--set", "model.embedding=3", "--dry-run"), "config model.embedding: expected a string")
    unet = ["train", "--data", "digits", "--model", "ddpm_unet", "--dry-run"]
    one_line_error(run(*unet, "--set", "model.ch_mult=3"), "config model.ch_mult: expected a list of integers, found 3")
    one_line_error(run(*unet, "--set", "model.dropout=true"), "config model.dropout: expected a number, found True")
    one_line_error(run(*unet, "--set", "model.num_scales=x"), "config model.num_scales: expected an integer, found 'x'")
    r = run(*unet, "--set", "model.ch_mult=[1,2]", "--set", "model.dropout=0", "--set", "model.num_groups=8")
    assert r.exit_code == 0 and "ch_mult = [" in r.output, r.output          # ints for a float, lists for sequences


def test_model_errors_name_the_flag_not_the_argument(tmp_path):
    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    out = ["--out", str(tmp_path / "x.npy")]
    for args in (["sample", *out], ["likelihood", "--data", "digits"],
                 ["optimize-steps", "--budget", "4", "--out", str(tmp_path / "fit.json")]):
        r = run(args[0], "--checkpoint", str(pipeline), *args[1:])
        one_line_error(r, "--checkpoint: the pipeline")
        assert "path_or_module" not in r.stderr
    one_line_error(run("sample", "--checkpoint", str(pipeline), "--config", "vp/cifar10_ddpmpp_continuous", *out),
                   "Error: --config: a diffusers directory carries its own config")


def test_text_outside_the_vocabulary_suggests_byte_tokens(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat\nthe dog ate the hat\n" * 5)
    (tmp_path / "bad.txt").write_text("the cat?\n")
    out = str(tmp_path / "run")
    r = run("train", "--task", "masked", "--data", str(text), "--out", out, "--device", "cpu", "--no-progress",
            "--steps", "3", "--batch-size", "8", "--set", "model.width=16", "--set", "model.depth=1",
            "--set", "model.heads=2", "--set", "sample.n=2", "--set", "sample.steps=2")
    assert r.exit_code == 0, r.output
    hint = "; a model trained with --set discrete.tokenizer=byte reads any UTF-8 text"
    one_line_error(run("likelihood", "--checkpoint", out, "--data", str(tmp_path / "bad.txt")),
                   f"line 1: character '?' at position 7 is out of the vocabulary (the model knows 12 characters: "
                   f"' acdeghmnost'){hint}")
    one_line_error(run("sample", "--checkpoint", out, "--prompt", "the cat!"),
                   "Error: --prompt: character '!' at position 7 is out of the vocabulary")
    one_line_error(run("sample", "--checkpoint", out, "--prompt", "the cat!"), hint)

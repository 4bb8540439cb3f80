"""The command line on captioned data: `--data digitpairs` and captioned folders pass the dry run; a bad
metadata row is one error line naming the file and line."""
import json

import numpy as np
from PIL import Image

from helpers import one_line_error, run


def test_train_dry_run_accepts_captioned_data(tmp_path):
    r = run("train", "--data", "digitpairs", "--dry-run")
    assert r.exit_code == 0, r.output
    assert 'name = "digitpairs"' in r.output
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "x"}) + "\n")
    r = run("train", "--data", str(tmp_path), "--dry-run")
    assert r.exit_code == 0, r.output


def test_train_bad_metadata_is_one_line(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,x\nb.png,y\n")
    r = run("train", "--data", str(tmp_path), "--dry-run")
    one_line_error(r, "metadata.csv' line 3: file_name 'b.png': no such file")

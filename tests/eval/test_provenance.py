"""provenance.json: digests of named files, Hub revisions from the local cache, no secrets (the per-command checks
are in each command's own CLI test)."""

from __future__ import annotations

import argparse
import json

from tests.eval.builders import sha256_of


def test_record_digests_specs_resolves_hub_revisions_and_drops_the_token(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from eval.report.provenance import PROVENANCE_FILE, write_provenance

    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt\na cat\n")
    cache = tmp_path / "hub"
    ref = cache / "models--org--model" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("0123abcd\n")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    args = argparse.Namespace(
        model=["A=org/model", "B=org/absent"],
        prompts=f"i2p={prompts}",
        token="hf_secret",
        seed=7,
        images_per_prompt=3,
        device="cpu",
        out=tmp_path / "out",
        _run_command=print,
    )
    (tmp_path / "out").mkdir()
    path = write_provenance(tmp_path / "out", args, command="t2i")
    assert path == tmp_path / "out" / PROVENANCE_FILE
    text = path.read_text()
    assert "hf_secret" not in text and "token" not in json.loads(text)["arguments"]
    record = json.loads(text)
    assert [(m["kind"], m["revision"]) for m in record["models"]["model"]] == [("hub", "0123abcd"), ("hub", None)]
    (p,) = record["data"]["prompts"]
    assert (p["kind"], p["path"], p["sha256"]) == ("file", str(prompts.resolve()), sha256_of(prompts))
    assert (record["seeds"], record["images_per_prompt"], record["device"]) == ({"seed": 7}, 3, {"device": "cpu"})

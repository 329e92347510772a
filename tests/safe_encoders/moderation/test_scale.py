"""`scan --engine ray`: a local Ray instance with two CPU workers writes the same scores as one local process."""

import os
from pathlib import Path

import pytest

from safe_encoders.hysac import HySAC
from safe_encoders.moderation.collection import InputSpec
from safe_encoders.moderation.scale import RayOptions, scan_with_ray
from safe_encoders.moderation.scan import ScanConfig, read_scan, scan
from tests.safe_encoders.moderation.scan_data import TEXTS, png_bytes, saved_tiny_hysac, write_table

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.usefixtures("one_torch_thread")]

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def local_ray():
    # Workers import this checkout (not whichever safe_encoders the interpreter has installed).
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # Two model actors of one CPU each, plus logical CPUs for Ray Data's read and write tasks: with only two,
    # the actors would hold both and the read task would wait for ever.
    # Loopback only: the test cluster talks to nothing but this machine.
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
        _node_ip_address="127.0.0.1",
    )
    yield
    ray.shutdown()


def test_two_ray_workers_write_the_scores_of_the_single_process_scan(local_ray, tmp_path):
    model_dir = saved_tiny_hysac(tmp_path / "model")
    (tmp_path / "data" / "img").mkdir(parents=True)
    rows = []
    for i in range(12):
        (tmp_path / "data" / "img" / f"{i}.png").write_bytes(png_bytes(40 + i) if i != 5 else b"corrupt")
        rows.append({"key": f"item-{i}", "caption": f"{TEXTS[i % len(TEXTS)]} {i}", "path": f"img/{i}.png"})
    for part in range(2):  # two input files, so that Ray has blocks to spread over its workers
        write_table(tmp_path / "data" / f"part-{part}.parquet", rows[part * 6 : part * 6 + 6])
    spec = InputSpec(str(tmp_path / "data"), kind="parquet", id_column="key", text_column="caption",
                     image_column="path")  # fmt: skip
    config = ScanConfig(batch_size=4, embeddings=True, progress=False, model_name=str(model_dir))
    summary = scan_with_ray(str(model_dir), spec, tmp_path / "ray", config, RayOptions(workers=2, blocks=2))
    assert (summary.written, summary.errors) == (24, 1)
    assert len(list((tmp_path / "ray").glob("*.parquet"))) == 2  # one file per block: the input was split in two
    local = scan(HySAC.from_pretrained(model_dir), spec, tmp_path / "local", config)
    assert local.written == 24
    by_key = {}
    for name in ("ray", "local"):
        table = read_scan(tmp_path / name)
        by_key[name] = {(row["id"], row["modality"]): row for row in table.to_pylist()}
    assert by_key["ray"].keys() == by_key["local"].keys() and len(by_key["ray"]) == 24
    for key, row in by_key["local"].items():
        other = by_key["ray"][key]
        assert other["unsafe"] == row["unsafe"] and other["error"] == row["error"], key
        if row["error"] is None:
            assert other["score"] == pytest.approx(row["score"], abs=1e-5), key
            assert other["embedding"] == pytest.approx(row["embedding"], abs=1e-5), key
        else:
            assert other["score"] is None and other["embedding"] is None, key
    assert by_key["ray"][("item-5", "image")]["error"].startswith("unreadable image")

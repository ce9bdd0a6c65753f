"""labeling.fiftyone.export on the demo data (the tiny render: ingested, auto-labeled by the packaged
teachers, snapshotted): the COCO JSON and YOLO label files FiftyOne's exporters write are read
back and checked box by box against the warehouse; the label tables are the manifest."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ferlab.cli import main
from labeling.fiftyone.export import export_version
from warehouse.errors import ConfigError, InputError
from warehouse.store import Warehouse
from warehouse.versions import UnknownDatasetVersion, read_manifest, snapshot_dataset_version

pytestmark = pytest.mark.server  # FiftyOne's database (mongod)


@pytest.fixture(scope="module")
def demo_version(demo_renders, tmp_path_factory) -> tuple[Warehouse, str]:
    from labeling.detection.autolabel import autolabel, select_images
    from labeling.detection.detectors import load_detector
    from labeling.detection.settings import AutoLabelSettings
    from warehouse.sources.disfa import ingest_disfa
    from warehouse.sources.fer2013 import ingest_fer2013
    from warehouse.sources.scraped import ingest_scraped

    src = demo_renders.path("tiny")
    wh = Warehouse(tmp_path_factory.mktemp("export") / "home")
    ingest_fer2013(wh, src / "fer2013.csv", show_progress=False)
    ingest_disfa(wh, src / "disfa", stride=3, show_progress=False)
    for batch in sorted((src / "scraped").iterdir()):
        ingest_scraped(wh, batch, show_progress=False)
    autolabel(wh, select_images(wh), load_detector("teachers"), AutoLabelSettings())
    # the version keeps the flagged crops too, so that every source has faces in it
    return wh, snapshot_dataset_version(wh, include_flagged=True).version


def _expected(wh: Warehouse, version: str) -> dict[str, Counter]:
    """file name -> Counter of classes the version's images should carry."""
    rows = wh.sql(
        """WITH m AS (SELECT * FROM dataset_manifest WHERE version = $v),
             img AS (SELECT DISTINCT image_id FROM m)
           SELECT i.media_path, 'face' AS label FROM m JOIN images i USING (image_id)
           UNION ALL
           SELECT i.media_path, 'person' FROM img JOIN images i USING (image_id)
             JOIN detections d ON d.image_id = img.image_id WHERE d.label = 'person'""",
        params={"v": version},
    ).to_pylist()
    out: dict[str, Counter] = {}
    for r in rows:
        out.setdefault(Path(r["media_path"]).name, Counter())[r["label"]] += 1
    return out


def test_export_coco_yolo_and_tables_match_the_warehouse(demo_version, tmp_path):
    wh, version = demo_version
    manifest = read_manifest(wh, version)
    expected = _expected(wh, version)
    assert sum(c["person"] for c in expected.values()) > 0 and manifest.num_rows > 10
    report = export_version(wh, version, tmp_path / "out")
    assert report.boxes == {
        "face": manifest.num_rows,
        "person": sum(c["person"] for c in expected.values()),
    }
    assert report.images == len(expected) and sum(report.splits.values()) == len(expected)

    # COCO: one labels file per split, the images once in data/
    coco = tmp_path / "out" / "coco"
    got: dict[str, Counter] = {}
    crop_ids = set()
    for split, n_images in report.splits.items():
        labels = json.loads((coco / f"{split}.json").read_text())
        names = {c["id"]: c["name"] for c in labels["categories"]}
        assert sorted(names.values()) == ["face", "person"]
        files = {im["id"]: im for im in labels["images"]}
        assert len(files) == n_images
        for ann in labels["annotations"]:
            im = files[ann["image_id"]]
            got.setdefault(im["file_name"], Counter())[names[ann["category_id"]]] += 1
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= im["width"] + 1e-3 and y + h <= im["height"] + 1e-3
            if names[ann["category_id"]] == "face":
                crop_ids.add(ann["crop_id"])
        for im in files.values():
            assert (coco / "data" / im["file_name"]).is_file()
    assert got == expected
    assert crop_ids == set(manifest.column("crop_id").to_pylist())

    # YOLO: one label file per image, class ids in dataset.yaml's order, normalized boxes
    yolo = tmp_path / "out" / "yolo"
    yaml_text = (yolo / "dataset.yaml").read_text()
    assert "face" in yaml_text and "person" in yaml_text
    import yaml

    names = yaml.safe_load(yaml_text)["names"]
    names = names if isinstance(names, list) else [names[k] for k in sorted(names)]
    assert names == ["face", "person"]
    got = {}
    for split in report.splits:
        for label_file in sorted((yolo / "labels" / split).glob("*.txt")):
            images = list((yolo / "images" / split).glob(label_file.stem + ".*"))
            assert len(images) == 1
            for line in label_file.read_text().splitlines():
                cls, *box = line.split()
                assert len(box) == 4 and all(0.0 <= float(v) <= 1.0 for v in box)
                got.setdefault(images[0].name, Counter())[names[int(cls)]] += 1
    assert got == expected

    # tables: the manifest as it is stored, and the boxes
    tables = tmp_path / "out" / "tables"
    assert pq.read_table(tables / "manifest.parquet").equals(manifest)
    assert (tables / "manifest.csv").read_text().count("\n") == manifest.num_rows + 1
    boxes = pq.read_table(tables / "boxes.parquet")
    assert Counter(boxes.column("label").to_pylist()) == Counter(report.boxes)
    assert json.loads((tables / "version.json").read_text())["n_crops"] == manifest.num_rows


def test_export_refuses_what_it_cannot_do(demo_version, tmp_path, capsys):
    wh, version = demo_version
    with pytest.raises(UnknownDatasetVersion):
        export_version(wh, "v-0000000000000000", tmp_path / "a")
    with pytest.raises(ConfigError, match="unknown export formats"):
        export_version(wh, version, tmp_path / "a", formats=["voc"])
    (tmp_path / "b" / "coco").mkdir(parents=True)
    (tmp_path / "b" / "coco" / "mine.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        export_version(wh, version, tmp_path / "b", formats=["coco"])
    # the CLI: tables only, then a one-line error for an unknown version
    out = tmp_path / "cli"
    assert main(["--home", str(wh.home), "export", version, "--format", "tables", "--out", str(out)]) == 0
    assert (out / "tables" / "manifest.parquet").is_file() and not (out / "coco").exists()
    assert main(["--home", str(wh.home), "export", "v-nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset version") and len(err.strip().splitlines()) == 1


def test_a_failed_export_leaves_nothing_and_the_retry_works(demo_version, tmp_path, monkeypatch):
    """Issue 21.8: FiftyOne failing after tables/ was written left a half export whose tables/ then
    refused the retry. The export is built beside --out and published in one rename."""
    import yaml

    import labeling.fiftyone.export as export

    wh, version = demo_version

    def broken():
        raise RuntimeError("FiftyOne's database did not start")

    monkeypatch.setattr(export, "import_fiftyone", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="did not start"):
        export_version(wh, version, out)
    assert sorted(tmp_path.iterdir()) == []  # no out, no half-built folder beside it
    # into a folder that holds an earlier export's tables: it is left as it was
    assert export_version(wh, version, out, formats=["tables"]).paths == {"tables": str(out / "tables")}
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(RuntimeError, match="did not start"):
        export_version(wh, version, out, formats=["coco", "yolo"])
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    monkeypatch.undo()
    report = export_version(wh, version, out, formats=["coco", "yolo"])  # the retry
    assert report.paths == {f: str(out / f) for f in ("coco", "yolo")}
    assert sorted(p.name for p in out.iterdir()) == ["coco", "tables", "yolo"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # the YOLO dataset.yaml names where the export is, not where it was built; nothing else names it
    assert yaml.safe_load((out / "yolo" / "dataset.yaml").read_text())["path"] == str(out / "yolo")
    for f in out.rglob("*"):
        assert f.suffix not in (".json", ".yaml", ".txt") or ".export-" not in f.read_text(), f
        assert not f.is_symlink() or ".export-" not in os.readlink(f), f

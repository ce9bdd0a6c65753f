"""Auto-labeling ingested images: detections and face crops land in the warehouse."""

from __future__ import annotations

import cv2

from ferlab.demo import write_sample_sources
from labeling.detection.autolabel import autolabel, select_images
from labeling.detection.detectors import load_detector
from warehouse import Warehouse
from warehouse.sources.disfa import ingest_disfa
from warehouse.sources.fer2013 import ingest_fer2013
from warehouse.sources.scraped import ingest_scraped


def _warehouse(tmp_path) -> Warehouse:
    sources = tmp_path / "sources"
    write_sample_sources(sources)
    wh = Warehouse(tmp_path / "home")
    ingest_fer2013(wh, sources / "fer2013.csv", show_progress=False)
    ingest_disfa(wh, sources / "disfa", subjects=["SN001"], show_progress=False)
    ingest_scraped(wh, sources / "scraped" / "batch-001", show_progress=False)
    return wh


def test_detect_crop_store_and_rerun_adds_nothing(tmp_path):
    wh = _warehouse(tmp_path)
    images = select_images(wh)
    report = autolabel(wh, images, load_detector("yunet"))
    assert report.frames == images.num_rows and not report.rejects
    assert report.added["detections"] == report.detections and report.added["crops"] == report.crops
    by_source = {
        r["source"]: (r["images"], r["crops"])
        for r in wh.sql(
            "SELECT i.source, count(DISTINCT i.image_id) AS images, count(c.crop_id) AS crops "
            "FROM images i LEFT JOIN crops c USING (image_id) GROUP BY 1"
        ).to_pylist()
    }
    assert by_source["fer2013"][0] == by_source["fer2013"][1]  # one full-image face each
    assert by_source["disfa"][1] >= 0.9 * by_source["disfa"][0]  # one face per frame, found
    crop = wh.sql("SELECT media_path, gray_media_path, size, gray_size FROM crops LIMIT 1").to_pylist()[0]
    assert (
        cv2.imread(str(wh.path(crop["media_path"]))).shape == (224, 224, 3) == (crop["size"], crop["size"], 3)
    )
    assert cv2.imread(str(wh.path(crop["gray_media_path"])), cv2.IMREAD_UNCHANGED).shape == (48, 48)
    again = autolabel(wh, images, load_detector("yunet"))
    assert again.added == {"detections": 0, "rejects": 0, "crops": 0, "autolabel_done": 0}
    assert (again.frames, again.skipped) == (0, images.num_rows)  # nothing decoded twice
    fer = wh.sql(
        "SELECT d.detector, d.x2 - d.x1 AS w FROM detections d JOIN images i USING (image_id) "
        "WHERE i.source = 'fer2013' LIMIT 1"
    ).to_pylist()[0]
    assert fer == {"detector": "source:fer2013", "w": 48.0}


def test_missing_media_is_a_reject_and_the_rest_goes_on(tmp_path):
    wh = _warehouse(tmp_path)
    images = select_images(wh, source="scraped")
    lost = images.column("media_path")[0].as_py()
    wh.path(lost).unlink()
    report = autolabel(wh, images, load_detector("yunet"))
    assert [(r.reason, r.detail) for r in report.rejects] == [("unreadable_media", lost)]
    assert report.frames == images.num_rows - 1
    assert wh.count("crops") == report.crops > 0

"""Scale benchmark (`make bench-scale`): every stage of the platform at >= 3 sizes, up to the full
FER-2013 (35,887 rows), two full DISFA subjects (9,690 frames at 1024x768) and 100,000 scraped
images, with the growth exponent of each stage fitted and projected to 1,000,000 faces.

    .venv/bin/python -m benchmarks.scale --sizes small          # smoke run (tens of minutes on 2 cores)
    .venv/bin/python -m benchmarks.scale --sizes full           # make bench-scale (hours on 2 cores)
    .venv/bin/python -m benchmarks.scale --scraped 500,1000,2000 --fer2013 1000,2000,4000 \\
        --disfa 100,200,400 --stages ingest,query               # own sizes, some stages
    .venv/bin/python -m benchmarks.scale.report [DIR]           # redo table + plot from DIR/scale.jsonl

Modules: generators (the inputs: scraped JPEG drops with planted near-duplicates, FER-2013 CSVs,
DISFA AVIs + AU label files; cheap, deterministic by seed, streamed to disk, cached in --work),
measure (one process: wall, CPU, peak RSS by wait4; a data root: disk, parts, rows), probe
(in-process query timings and the near-duplicate check, run as its own process), fit (power-law
exponents, projections), report (scale.md, scale.png), run (the stages and the CLI).

Per level (one size of each source), on a fresh data root, in this order, each stage a process:
  ingest_fer2013           ferlab ingest fer2013 CSV                            size: rows
  naive_parse_fer2013      the baseline: pandas read_csv + str.split per row     size: rows
  ingest_scraped           ferlab ingest images BATCH, once per batch (500 / 5,000 images), as a
                           team adds drops; per batch in the JSON lines too      size: images
  ingest_disfa             ferlab ingest disfa ROOT --subject SN001 [...]       size: frames
  autolabel_fer2013        ferlab autolabel --source fer2013 (crop only)         size: rows
  autolabel_scraped        ferlab autolabel --source scraped (the teachers)      size: images
  autolabel_disfa          ferlab autolabel --source disfa (the teachers)        size: frames
  version                  ferlab version (a dataset-version snapshot)           size: images stored
  sql_cli:<q>              ferlab sql <q> for q in count, join (images x crops x emotion_labels),
                           au, lookup: the whole process                         size: images stored
  sql_call:<q>             Warehouse.sql(<q>) in-process, median of 5 (connect + views + query),
                           so the CLI's start is separated                       size: images stored
  near_duplicates          near_duplicates rows against the pairs the generator planted (found,
                           missed, extra); the detection itself runs in ingest_scraped
  review_queue             ferlab review-queue emotion: needs a trained production model, so it is
                           recorded as skipped (with the CLI's message) on a fresh data root
  autolabel_disfa_student  ferlab autolabel --source disfa --spec <YOLO student .pt>: the student
                           trained once in --work by `ferlab face-detector` (or --student PATH)
After each stage: disk used by the data root, *.parquet parts and stored rows per table.
"""

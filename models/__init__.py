"""Face models of the platform, free of Dagster: the seeds' networks (`networks`: transfer-learning
backbones MobileNetV2 / MobileNet-v1 / DenseNet-121 / DenseNet-201 under a GAP -> BatchNorm -> ReLU ->
Dropout -> Linear head, and the seed-003 FER-2013 CNN), checkpoints and ONNX export (`checkpoint`), the
AU losses (`losses`), metrics and evaluation reports (`metrics`, `report`), data and training (`data`,
`train`). Submodules are imported explicitly (`from models.networks import build_model`) so that
importing the package stays cheap."""

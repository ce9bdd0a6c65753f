"""Face models of the platform, free of Dagster: the seeds' networks (`networks`: transfer-learning
backbones MobileNetV2 / MobileNet-v1 / DenseNet-121 / DenseNet-201 under a GAP -> BatchNorm -> ReLU ->
Dropout -> Linear head, and the seed-003 FER-2013 CNN), checkpoints and ONNX export (`checkpoint`), the
AU losses (`losses`), one settings object per training run (`settings`), the tasks as types (`tasks`),
data and training (`data`, `train`, `pipeline`), held-out predictions (`predictions`), metrics and
metric rows (`metrics`, `evaluation`) and the reports rendered from them (`render`, `report`).
Submodules are imported explicitly (`from models.networks import build_model`) so that importing the
package stays cheap."""

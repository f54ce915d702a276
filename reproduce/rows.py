"""The rows: one published protocol each, as data. Each value is cited with its source: the docs pages' anchors, the
DINOv2 paper's tables, and the official model card (facebookresearch/dinov2 MODEL_CARD.md at b8931f7).

A row's `protocol` overrides are `python train.py` overrides (Hydra); `runs` lists the extra overrides of each run
(COCO-20i: one per fold), whose metrics are averaged. `values` maps a logged metric to its published value, in the
paper's unit: ours is `metric x scale`. `pipeline` names the generated stand-in set that `--pipeline` runs instead of
the real data (the same head and protocol options, tiny models). GPU minutes and GiB are ESTIMATES for one H100
(no GPU has measured this suite yet: README, "Measured so far"), from the models' sizes and the split sizes.

Longer than 300 lines: the rows are data, one entry per published number with its source and data layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Data:
    """A dataset: its `data=` config, the paths (under `paths.data_dir`) a run needs, and how to get them."""

    config: str
    needs: tuple[str, ...]
    get: str


@dataclass(frozen=True)
class Row:
    name: str
    source: str  # paper, table, models
    protocol: tuple[str, ...]  # train.py overrides, without data=, backbone= and sam.model_type=
    data: Data
    values: dict[str, float]  # logged metric -> published value (paper's unit)
    tolerance: float  # |ours - paper| allowed, in the paper's unit
    why: str  # why that tolerance
    pipeline: tuple[str, ...]  # the generated stand-in: an offline experiment and its shrinking overrides
    gpu_minutes: float  # ESTIMATE, one H100
    gpu_gib: float  # ESTIMATE, peak GPU memory
    backbone: str | None = None  # configs/backbone/<name>.yaml; weights from backbones/dinov2.py's official URL
    sam: str | None = None  # sam.model_type; weights and SHA-256 from sam/model.py's CHECKPOINTS
    scale: float = 100.0  # ours = logged metric x scale (fractions -> %)
    runs: tuple[tuple[str, ...], ...] = field(default=((),))

    def overrides(self, run: tuple[str, ...] = ()) -> list[str]:
        """The real run's train.py overrides; `{data_dir}` in a value stands for `paths.data_dir`."""
        models = [f"backbone={self.backbone}"] * bool(self.backbone) + [f"sam.model_type={self.sam}"] * bool(self.sam)
        return [*self.protocol, f"data={self.data.config}", *models, *run]


COCO = Data(
    "coco",
    ("coco/val2017", "coco/annotations/instances_val2017.json", "coco/vitdet_h_coco_val2017.json"),
    "COCO val2017 from http://images.cocodataset.org/zips/val2017.zip and annotations_trainval2017.zip, unpacked "
    "into data/coco; vitdet_h_coco_val2017.json: the ViTDet-H boxes (COCO results format) from detectron2's "
    "projects/ViTDet model zoo, run on val2017 (no public results file)",
)
LVIS = Data(
    "coco",
    ("coco/val2017", "coco/train2017", "coco/annotations/lvis_v1_val.json", "coco/vitdet_h_lvis_v1_val.json"),
    "COCO 2017 images (train2017 and val2017 zips from http://images.cocodataset.org) and lvis_v1_val.json from "
    "https://www.lvisdataset.org, under data/coco; vitdet_h_lvis_v1_val.json: ViTDet-H's LVIS boxes (detectron2 "
    "projects/ViTDet, COCO results format)",
)
BSDS = Data(
    "bsds500",
    ("BSDS500/images/test", "BSDS500/groundTruth/test"),
    "BSR_bsds500.tgz from https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/resources.html; "
    "its BSR/BSDS500/data folder as data/BSDS500",
)
COCO20I = Data(
    "coco20i",
    ("coco2014/val2014", "coco2014/annotations/instances_val2014.json"),
    "http://images.cocodataset.org/zips/val2014.zip and annotations/annotations_trainval2014.zip, unpacked into "
    "data/coco2014",
)
FSS1000 = Data(
    "fss1000",
    ("fss1000/fewshot_data", "fss1000/splits/test.txt"),
    "https://github.com/HKUSTCV/FSS-1000 (fewshot_data.zip into data/fss1000) and HSNet's splits "
    "(https://github.com/juhongm999/hsnet/tree/main/data/splits/fss into data/fss1000/splits)",
)
PERSEG = Data(
    "perseg",
    ("perseg/Images", "perseg/Annotations"),
    "the PerSeg link of https://github.com/ZrrSkywalker/Personalize-SAM, unpacked so that data/perseg holds "
    "Images/ and Annotations/",
)


def revisited(name: str) -> Data:
    images = {
        "roxford5k": "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images.tgz",
        "rparis6k": "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_1.tgz and paris_2.tgz",
    }[name]
    return Data(
        name,
        (f"{name}/jpg", f"{name}/gnd_{name}.pkl"),
        f"images from {images} into data/{name}/jpg; http://cmp.felk.cvut.cz/revisitop/data/datasets/{name}/"
        f"gnd_{name}.pkl into data/{name}",
    )


ADE20K = Data(
    "ade20k",
    ("ade20k/ADEChallengeData2016/images/validation", "ade20k/ADEChallengeData2016/annotations/validation"),
    "ADEChallengeData2016.zip from http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip, unpacked "
    "into data/ade20k (or data.download=true)",
)
NYU = Data(
    "nyu",
    ("nyu",),
    "NYU-Depth v2 in the layout of datamodules/depth/nyu.py's docstring (the BTS / Monodepth split: sync/ for training, "
    "official_splits/test/ for the 654 test images), under data/nyu",
)

SAM_BOX_PIPELINE = ("experiment=sam_quickstart", "data.generate_n=3", "head.overlays=0")
ONESHOT_PIPELINE = ("experiment=oneshot_quickstart", "data.n_episodes=3", "head.image_size=112", "head.overlays=0")
ZERO_SHOT = "nothing is trained"

ROWS: list[Row] = [
    Row(
        "sam-coco-vitdet-boxes",
        "SAM paper (Kirillov et al. 2023), Table 5: COCO, ViTDet-H boxes, SAM ViT-H",
        ("head=sam_box", "data.detections={data_dir}/coco/vitdet_h_coco_val2017.json"),
        COCO,
        {"test/mask_AP": 46.5},
        1.0,
        f"{ZERO_SHOT}: only the boxes (the same ViTDet-H file?), bf16 autocast and the AP code (torchmetrics on "
        "pycocotools vs detectron2's) can differ",
        SAM_BOX_PIPELINE,
        25,
        12,
        sam="vit_h",
    ),
    Row(
        "sam-lvis-vitdet-boxes",
        "SAM paper, Table 5: LVIS v1, ViTDet-H boxes, SAM ViT-H",
        (
            "head=sam_box",
            "data.layout=lvis",
            "data.annotations=annotations/lvis_v1_val.json",
            "data.detections={data_dir}/coco/vitdet_h_lvis_v1_val.json",
        ),
        LVIS,
        {"test/mask_AP": 44.7},
        1.0,
        f"{ZERO_SHOT}: as the COCO row; LVIS's federated AP is computed by the COCO protocol here",
        SAM_BOX_PIPELINE,
        90,
        12,
        sam="vit_h",
    ),
    Row(
        "sam-bsds500-edges",
        "SAM paper, Table 3: BSDS500 zero-shot edges, SAM ViT-H",
        ("head=sam_edges",),
        BSDS,
        {"test/ODS": 0.768, "test/OIS": 0.786, "test/AP": 0.794, "test/R50": 0.928},
        0.02,
        f"{ZERO_SHOT}; the C++ benchmark's random outlier links make its counts vary by a few pixels (README)",
        ("experiment=sam_edges_quickstart", "data.generate_n=2", "head.points_per_side=8", "head.thresholds=19"),
        8,
        12,
        sam="vit_h",
        scale=1.0,
    ),
    Row(
        "matcher-coco20i-1shot",
        "Matcher (Liu et al., ICLR 2024): COCO-20i 1-shot mIoU, mean of 4 folds, DINOv2 ViT-L/14 + SAM ViT-H",
        ("head=oneshot", "data.shots=1"),
        COCO20I,
        {"test/mIoU": 52.7},
        5.0,
        f"{ZERO_SHOT}, but Matcher's EMD score is replaced and the segmenter's options are not tuned (README)",
        ONESHOT_PIPELINE,
        40,
        24,
        backbone="dinov2_vitl14",
        sam="vit_h",
        runs=tuple((f"data.fold={fold}",) for fold in range(4)),
    ),
    Row(
        "matcher-fss1000-1shot",
        "Matcher: FSS-1000 1-shot mIoU, DINOv2 ViT-L/14 + SAM ViT-H",
        ("head=oneshot", "data.shots=1"),
        FSS1000,
        {"test/mIoU": 87.0},
        5.0,
        f"{ZERO_SHOT}, but Matcher's EMD score is replaced and the segmenter's options are not tuned (README)",
        ONESHOT_PIPELINE,
        25,
        24,
        backbone="dinov2_vitl14",
        sam="vit_h",
    ),
    Row(
        "persam-perseg",
        "PerSAM training-free (Zhang et al. 2023): PerSeg mIoU, SAM ViT-H (our matching: DINOv2 ViT-L/14)",
        ("head=oneshot", "head.method=persam"),
        PERSEG,
        {"test/mIoU": 89.3},
        5.0,
        f"{ZERO_SHOT}, but the positive point is the best matched DINOv2 patch, not PerSAM's SAM-feature maximum",
        (*ONESHOT_PIPELINE, "head.method=persam"),
        5,
        24,
        backbone="dinov2_vitl14",
        sam="vit_h",
    ),
]

# ADE20k mIoU: lin. (DINOv2 paper, Table 10) and +ms (the same table; the model card's "ADE20k segm. multiscale").
SEG_MS = {"vits14": 47.2, "vitb14": 51.3, "vitl14": 53.1, "vitg14": 53.0}
SEG_MINUTES = {"vits14": 60, "vitb14": 80, "vitl14": 120, "vitg14": 240}  # 40k steps of batch 16 at 512 px
SEG_WHY = "a linear head trained from scratch: seeds move mIoU by about 0.5; albumentations approximates mmseg's "
SEG_WHY += "photometric distortion (README)"
SEG_PIPELINE = ("experiment=quickstart", "data.generate_n_train=4", "data.generate_n_val=2", "data.batch_size=2")
SEG_PIPELINE += ("data.crop_size=56", "data.short_side=56", "head.stride=28")
SEG_PIPELINE += ("trainer.max_steps=2", "trainer.val_check_interval=1")
ROWS += [
    Row(
        "dinov2-ade20k-lin-vits14",
        "DINOv2 paper (Oquab et al. 2023), Table 10: ADE20k mIoU, lin., ViT-S/14",
        ("head=linear_seg",),
        ADE20K,
        {"test/mIoU": 44.3},
        1.0,
        SEG_WHY,
        SEG_PIPELINE,
        SEG_MINUTES["vits14"],
        12,
        backbone="dinov2_vits14",
    )
]
ROWS += [
    Row(
        f"dinov2-ade20k-ms-{size}",
        f"DINOv2 paper, Table 10 and MODEL_CARD.md: ADE20k mIoU, +ms, ViT-{size[3].upper()}/14",
        ("head=linear_seg_ms",),
        ADE20K,
        {"test/mIoU": value},
        1.0,
        SEG_WHY + "; multi-scale flip test-time augmentation as the official config",
        (*SEG_PIPELINE, "head=linear_seg_ms", "head.tta_scales=[1.0]"),
        SEG_MINUTES[size] * 1.5,
        24,
        backbone=f"dinov2_{size}",
    )
    for size, value in SEG_MS.items()
]

# NYU-Depth v2 RMSE: lin. 1 (DINOv2 paper, Table 11) and lin. 4 (Table 11; the model card's "linear 4 layers").
DEPTH_LIN4 = {"vits14": 0.417, "vitb14": 0.362, "vitl14": 0.333, "vitg14": 0.298}
DEPTH_WHY = "a head trained from scratch: seeds move RMSE by about 0.005; the crop and flip follow the official config"
DEPTH_PIPELINE = (
    "experiment=depth_quickstart",
    "data.generate_n_train=4",
    "data.generate_n_test=2",
    "data.batch_size=2",
)
DEPTH_PIPELINE += ("trainer.max_steps=2", "trainer.val_check_interval=1")
ROWS += [
    Row(
        "dinov2-nyu-lin1-vits14",
        "DINOv2 paper, Table 11: NYU-Depth v2 RMSE, lin. 1, ViT-S/14",
        ("head=depth_linear",),
        NYU,
        {"test/RMSE": 0.449},
        0.02,
        DEPTH_WHY,
        (*DEPTH_PIPELINE, "head=depth_linear"),
        45,
        12,
        backbone="dinov2_vits14",
        scale=1.0,
    )
]
ROWS += [
    Row(
        f"dinov2-nyu-lin4-{size}",
        f"DINOv2 paper, Table 11 and MODEL_CARD.md: NYU-Depth v2 RMSE, lin. 4, ViT-{size[3].upper()}/14",
        ("head=depth_linear4",),
        NYU,
        {"test/RMSE": value},
        0.02,
        DEPTH_WHY,
        DEPTH_PIPELINE,
        {"vits14": 45, "vitb14": 60, "vitl14": 90, "vitg14": 180}[size],
        {"vits14": 12, "vitb14": 16, "vitl14": 24, "vitg14": 40}[size],
        backbone=f"dinov2_{size}",
        scale=1.0,
    )
    for size, value in DEPTH_LIN4.items()
]

# DINOv2 paper, Table 9: revisited Oxford / Paris mAP, Medium and Hard, by model size.
TABLE_9 = {
    "vits14": {"roxford5k": (68.8, 43.2), "rparis6k": (84.6, 68.5)},
    "vitb14": {"roxford5k": (72.9, 49.5), "rparis6k": (90.3, 78.6)},
    "vitl14": {"roxford5k": (75.1, 54.0), "rparis6k": (92.7, 83.5)},
    "vitg14": {"roxford5k": (73.6, 52.3), "rparis6k": (92.1, 82.6)},
}
MINUTES = {"vits14": 3, "vitb14": 4, "vitl14": 6, "vitg14": 10}
GIB = {"vits14": 2, "vitb14": 3, "vitl14": 5, "vitg14": 10}
ROWS += [
    Row(
        f"retrieval-{dataset}-{size}",
        f"DINOv2 paper (Oquab et al. 2023), Table 9: {dataset} M / H, ViT-{size[3].upper()}/14",
        ("head=retrieval",),
        revisited(dataset),
        {"test/mAP_M": medium, "test/mAP_H": hard},
        2.0,
        f"{ZERO_SHOT}, but the paper's input resolution is not known (224 px here, README)",
        ("experiment=retrieval_quickstart", "data.image_size=56"),
        MINUTES[size],
        GIB[size],
        backbone=f"dinov2_{size}",
    )
    for size, datasets in TABLE_9.items()
    for dataset, (medium, hard) in datasets.items()
]

BY_NAME = {row.name: row for row in ROWS}

"""The rows: one published protocol each, as data. Each value is cited with its source: the docs pages' anchors, the
DINOv2 paper's tables (arXiv 2304.07193v2: Table 4 ImageNet, 9 retrieval, 10 segmentation, 11 depth), and the
official model card (facebookresearch/dinov2 MODEL_CARD.md at b8931f7, which repeats the paper's values it lists).

A row's `protocol` overrides are `python train.py` overrides (Hydra); `runs` lists the extra overrides of each run
(COCO-20i: one per fold), whose metrics are averaged. `values` maps a logged metric to its published value, in the
paper's unit: ours is `metric x scale`. `pipeline` is what `--pipeline` runs instead: the same head on generated
data with tiny models, either a quickstart's generated set or a `stand_in` that `reproduce/stand_ins.py` writes in
the real dataset's layout first (`{data_dir}` in an override stands for `paths.data_dir`, in both modes). `note`
says what the source leaves open and what the row chose. GPU minutes and GiB are ESTIMATES for one H100 (no GPU has
measured this suite yet: docs/speed.md, "Measured so far"), from the models' sizes and the split sizes.

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
    stand_in: str | None = None  # the generated set `--pipeline` writes first (reproduce/stand_ins.py), if any
    note: str = ""  # what the source leaves open, and what this row chose

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

VOC2012 = Data(
    "voc2012",
    tuple(f"voc2012/VOCdevkit/VOC2012/{p}" for p in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation")),
    "VOCtrainval_11-May-2012.tar (2 GB, md5 6cd6e144f989b92b3379bac3b3de84fd) from "
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (torchvision's mirror "
    "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar), unpacked into data/voc2012 "
    "(or `--set data.download=true`, which checks that md5)",
)
CITYSCAPES = Data(
    "cityscapes",
    ("cityscapes/leftImg8bit/train", "cityscapes/leftImg8bit/val", "cityscapes/gtFine/train", "cityscapes/gtFine/val"),
    "leftImg8bit_trainvaltest.zip (11 GB) and gtFine_trainvaltest.zip (241 MB) from "
    "https://www.cityscapes-dataset.com/downloads/ (needs a login; that page gives each file's md5), unzipped into "
    "data/cityscapes",
)
KITTI = Data(
    "kitti",
    ("kitti/kitti_eigen_train.txt", "kitti/kitti_eigen_test.txt", "kitti/input", "kitti/gt_depth"),
    "the KITTI raw sequences (https://www.cvlibs.net/datasets/kitti/raw_data.php, needs a login) as "
    "data/kitti/input/DATE/DRIVE_sync/, the depth benchmark's annotated depth maps (data_depth_annotated.zip, "
    "https://www.cvlibs.net/datasets/kitti/eval_depth.php?benchmark=depth_prediction) as "
    "data/kitti/gt_depth/DRIVE_sync/proj_depth/groundtruth/, and the Eigen split lists kitti_eigen_train.txt and "
    "kitti_eigen_test.txt of https://github.com/zhyever/Monocular-Depth-Estimation-Toolbox (splits/) in data/kitti; "
    "KITTI publishes no checksums",
)
IMAGENET = Data(
    "imagefolder",
    ("imagenet/train", "imagenet/val"),
    "ILSVRC2012_img_train.tar (md5 1d675b47d978889d74fa0da5fadfb00e), ILSVRC2012_img_val.tar (md5 "
    "29b22e2961454d5413ddabcf34fc5622) and ILSVRC2012_devkit_t12.tar.gz (md5 fa75699e90414af021442c21a62c3abf) from "
    'https://image-net.org (needs a login) into data/imagenet; then `python -c "import torchvision; '
    "[torchvision.datasets.ImageNet('data/imagenet', split=s) for s in ('train', 'val')]\"` checks those md5s and "
    "unpacks them into train/<wnid>/ and val/<wnid>/",
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
        f"{ZERO_SHOT}; the C++ benchmark's random outlier links make its counts vary by a few pixels (docs/conformance.md)",
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
        f"{ZERO_SHOT}, but Matcher's EMD score is replaced and the segmenter's options are not tuned (docs/oneshot.md)",
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
        f"{ZERO_SHOT}, but Matcher's EMD score is replaced and the segmenter's options are not tuned (docs/oneshot.md)",
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

SIZES = ("vits14", "vitb14", "vitl14", "vitg14")


def arch(size: str) -> str:
    """The paper's name of a size: "vits14" -> "ViT-S/14", "vitg14" -> "ViT-g/14"."""
    return f"ViT-{size[3] if size[3] == 'g' else size[3].upper()}/14"


# DINOv2 paper (arXiv 2304.07193v2), Table 10: mIoU of frozen features with a linear head, (lin., +ms) by size.
# ADE20k +ms is also the model card's "ADE20k segm. multiscale".
TABLE_10 = {
    "ade20k": {"vits14": (44.3, 47.2), "vitb14": (47.3, 51.3), "vitl14": (47.7, 53.1), "vitg14": (49.0, 53.0)},
    "voc2012": {"vits14": (81.1, 82.6), "vitb14": (82.5, 84.9), "vitl14": (82.1, 86.0), "vitg14": (83.0, 86.2)},
    "cityscapes": {"vits14": (66.6, 77.1), "vitb14": (69.4, 80.0), "vitl14": (70.3, 80.9), "vitg14": (71.3, 81.0)},
}
SEG_DATA = {"ade20k": ADE20K, "voc2012": VOC2012, "cityscapes": CITYSCAPES}
SEG_TITLE = {"ade20k": "ADE20k", "voc2012": "Pascal VOC 2012", "cityscapes": "Cityscapes"}
# 40k steps of batch 16 at 512 px, then the val split (Cityscapes: 500 images of 1024x2048 in 512 windows)
SEG_MINUTES = {"vits14": 60, "vitb14": 80, "vitl14": 120, "vitg14": 240}
SEG_SCALE = {"ade20k": 1.0, "voc2012": 1.0, "cityscapes": 1.2}
MS_SCALE = {"ade20k": 2.0, "voc2012": 2.0, "cityscapes": 2.5}  # 640 px (not Cityscapes), 4 blocks, 10 TTA passes
SEG_WHY = "a linear head trained from scratch: seeds move mIoU by about 0.5; albumentations approximates mmseg's "
SEG_WHY += "photometric distortion (docs/segmentation.md)"
# Sec. 7.4: "+ms ... use a larger image resolution of 640"; stride 426 is 2/3 of the window, as 341 of 512
MS_640 = ("data.crop_size=640", "data.short_side=640", "head.stride=426")
SEG_NOTES = {
    "ade20k": "",
    "voc2012": "Table 10 does not say whether VOC trains on the 1,464 images of ImageSets/Segmentation/train.txt or "
    "on the 10,582 of the SBD-augmented set: this row trains on train.txt, for 40k steps (the released "
    "voc2012 configs were not read here)",
    "cityscapes": "the paper gives no Cityscapes schedule or resolution: these rows train 40k steps on 512 crops of "
    "the 1024 short side (data=cityscapes), the +ms ones too (Sec. 7.4's 640 px is read as ADE20k's and VOC's)",
}
SEG_PIPELINE = ("experiment=quickstart", "data.generate_n_train=4", "data.generate_n_val=2", "data.batch_size=2")
SEG_PIPELINE += ("data.crop_size=56", "data.short_side=56", "head.stride=28")
SEG_PIPELINE += ("trainer.max_steps=2", "trainer.val_check_interval=2")
# two steps and one validation (the end of the first epoch) on a stand-in (reproduce/stand_ins.py), for the datasets
# without a data.generate of their own
FEW_STEPS = ("data.batch_size=2", "trainer.max_steps=2", "trainer.val_check_interval=2")
FEW_STEPS += ("trainer.log_every_n_steps=1", "trainer.num_sanity_val_steps=0")


def seg_pipeline(dataset: str, ms: bool) -> tuple[str, ...]:
    head = "linear_seg_ms" if ms else "linear_seg"
    tta = ("head.tta_scales=[1.0]",) * ms
    if dataset == "ade20k":
        return (*SEG_PIPELINE, f"head={head}", *tta) if ms else SEG_PIPELINE
    small = ("data.crop_size=56", "data.short_side=56", "head.stride=28", "head.warmup_steps=1")
    return (f"data={dataset}", f"head={head}", *small, *FEW_STEPS, *tta)


def seg_row(dataset: str, size: str, ms: bool) -> Row:
    value = TABLE_10[dataset][size][ms]
    card = " and MODEL_CARD.md" if dataset == "ade20k" and ms else ""
    return Row(
        f"dinov2-{dataset}-{'ms' if ms else 'lin'}-{size}",
        f"DINOv2 paper (Oquab et al. 2023), Table 10{card}: {SEG_TITLE[dataset]} mIoU, {'+ms' if ms else 'lin.'}, "
        f"{arch(size)}",
        ("head=linear_seg_ms", *MS_640 * (dataset != "cityscapes")) if ms else ("head=linear_seg",),
        SEG_DATA[dataset],
        {"test/mIoU": value},
        1.5 if dataset == "cityscapes" else 1.0,
        SEG_WHY
        + "; multi-scale flip test-time augmentation as the official config" * ms
        + "; Cityscapes' 500 val images vary more" * (dataset == "cityscapes"),
        seg_pipeline(dataset, ms),
        round(SEG_MINUTES[size] * SEG_SCALE[dataset] * (MS_SCALE[dataset] if ms else 1)),
        (32 if size == "vitg14" else 24) if ms else (16 if size == "vitg14" else 12),
        backbone=f"dinov2_{size}",
        stand_in=None if dataset == "ade20k" else dataset,
        note="; ".join(
            filter(None, ["+ms at 640 px: Sec. 7.4" * (ms and dataset != "cityscapes"), SEG_NOTES[dataset]])
        ),
    )


ROWS += [seg_row(dataset, size, ms) for dataset in TABLE_10 for ms in (False, True) for size in SIZES]

# DINOv2 paper, Table 11: depth RMSE (m) of frozen features, (lin. 1, lin. 4, DPT) by size; NYUd lin. 4 is also the
# model card's "NYU-Depth v2 linear 4 layers".
TABLE_11 = {
    "nyu": {
        "vits14": (0.449, 0.417, 0.356),
        "vitb14": (0.399, 0.362, 0.317),
        "vitl14": (0.384, 0.333, 0.293),
        "vitg14": (0.344, 0.298, 0.279),
    },
    "kitti": {
        "vits14": (3.10, 2.86, 2.34),
        "vitb14": (2.90, 2.59, 2.23),
        "vitl14": (2.78, 2.50, 2.14),
        "vitg14": (2.62, 2.35, 2.11),
    },
}
DEPTH_HEADS = {"lin1": "depth_linear", "lin4": "depth_linear4", "dpt": "depth_dpt"}
DEPTH_TITLE = {"lin1": "lin. 1", "lin4": "lin. 4", "dpt": "DPT"}
DEPTH_DATA = {"nyu": NYU, "kitti": KITTI}
DEPTH_MINUTES = {"vits14": 45, "vitb14": 60, "vitl14": 90, "vitg14": 180}  # 40k steps of batch 16, then the test split
DEPTH_GIB = {"vits14": 12, "vitb14": 16, "vitl14": 24, "vitg14": 40}
DEPTH_WHY = "a head trained from scratch: seeds move RMSE by about 0.005; the crop and flip follow the official config"
KITTI_WHY = "a head trained from scratch: seeds move KITTI's RMSE by a few hundredths of a metre (0-80 m depths)"
KITTI_NOTE = "the paper follows Li et al. 2022b's depth toolbox; the KITTI schedule is not given: 40k steps here"
DEPTH_PIPELINE = (
    "experiment=depth_quickstart",
    "data.generate_n_train=4",
    "data.generate_n_test=2",
    "data.batch_size=2",
)
DEPTH_PIPELINE += ("trainer.max_steps=2", "trainer.val_check_interval=2")


def depth_pipeline(dataset: str, head: str) -> tuple[str, ...]:
    narrow = ("head.channels=16",) * (head == "depth_dpt")  # DPT's 256 channels take most of a CPU run's time
    if dataset == "nyu":
        return DEPTH_PIPELINE if head == "depth_linear4" else (*DEPTH_PIPELINE, f"head={head}", *narrow)
    small = ("data.crop_size=[56,84]", "head.warmup_steps=1", "head.sigloss_warmup_steps=1")
    return (f"data={dataset}", f"head={head}", *small, *narrow, *FEW_STEPS)


def depth_row(dataset: str, size: str, kind: str) -> Row:
    value = TABLE_11[dataset][size][list(DEPTH_HEADS).index(kind)]
    card = " and MODEL_CARD.md" if dataset == "nyu" and kind == "lin4" else ""
    title = "NYU-Depth v2" if dataset == "nyu" else "KITTI (Eigen split)"
    minutes = DEPTH_MINUTES[size] * (1.3 if kind == "dpt" else 1) * (1.2 if dataset == "kitti" else 1)
    return Row(
        f"dinov2-{dataset}-{kind}-{size}",
        f"DINOv2 paper, Table 11{card}: {title} RMSE, {DEPTH_TITLE[kind]}, {arch(size)}",
        (f"head={DEPTH_HEADS[kind]}",),
        DEPTH_DATA[dataset],
        {"test/RMSE": value},
        0.02 if dataset == "nyu" else 0.1,
        DEPTH_WHY if dataset == "nyu" else KITTI_WHY,
        depth_pipeline(dataset, DEPTH_HEADS[kind]),
        round(minutes),
        DEPTH_GIB[size] + 4 * (kind == "dpt"),
        backbone=f"dinov2_{size}",
        scale=1.0,
        stand_in="kitti" if dataset == "kitti" else None,
        note="" if dataset == "nyu" else KITTI_NOTE,
    )


ROWS += [depth_row(dataset, size, kind) for dataset in TABLE_11 for kind in DEPTH_HEADS for size in SIZES]

# DINOv2 paper, Table 4 (and MODEL_CARD.md): ImageNet-1k val top-1 (%) of frozen features, (k-NN, linear) by size.
TABLE_4 = {"vits14": (79.0, 81.1), "vitb14": (82.1, 84.5), "vitl14": (83.5, 86.3), "vitg14": (83.5, 86.5)}
IMAGENET_PROTOCOL = ("data.root={data_dir}/imagenet", "data.num_classes=1000")
IMAGENET_PIPELINE = ("data=imagefolder", "data.root={data_dir}/imagenet", "data.resize_size=64", "data.crop_size=56")
IMAGENET_PIPELINE += ("data.batch_size=8",)
KNN_NOTE = (
    "Table 4 does not say which k: DINOv2's k-NN evaluation reports k = 10, 20, 100, 200 (T = 0.07); this row "
    "compares k = 20, as DINO's 20-NN"
)
LINEAR_NOTE = (
    "ViT-g: the train features (4 class tokens + the mean patch token of 1.28M images) take about 39 GiB, about "
    "74 GiB on the GPU with the training part's copy, near an 80 GiB H100's limit; the host needs about 100 GiB"
)
KNN_WHY = f"{ZERO_SHOT}: only the resize (albumentations vs torchvision's bicubic) and bf16 can differ"
LINEAR_WHY = (
    "the official evaluation trains on augmented crops (random resized crop, flip); here the features are computed "
    "once, without augmentation (docs/classification.md): expect up to about a point less"
)


@dataclass(frozen=True)
class Probe:
    """A classification protocol of Table 4: its head, logged metric, tolerance, and the pipeline's extra options."""

    head: str
    metric: str
    tolerance: float
    why: str
    pipeline: tuple[str, ...]
    minutes: dict[str, float]  # ESTIMATE by size: 1.33M images through the backbone (decoding-bound), then the probe
    gib: dict[str, float]
    note: str


CLASSIFY = {
    "knn": Probe(
        "knn",
        "test/knn_k20_top1",
        0.5,
        KNN_WHY,
        (),
        {"vits14": 12, "vitb14": 15, "vitl14": 25, "vitg14": 60},
        {"vits14": 4, "vitb14": 6, "vitl14": 8, "vitg14": 16},
        KNN_NOTE,
    ),
    "linear": Probe(
        "linear_probe",
        "test/linear_top1",
        1.0,
        LINEAR_WHY,
        ("head.epochs=2", "head.batch_size=8", "head.learning_rates=[0.001,0.01]"),
        {"vits14": 25, "vitb14": 30, "vitl14": 45, "vitg14": 100},
        {"vits14": 20, "vitb14": 38, "vitl14": 50, "vitg14": 75},
        "",
    ),
}


def imagenet_row(kind: str, size: str) -> Row:
    probe = CLASSIFY[kind]
    return Row(
        f"dinov2-imagenet-{kind}-{size}",
        f"DINOv2 paper, Table 4 and MODEL_CARD.md: ImageNet-1k val top-1, {'k-NN' if kind == 'knn' else 'linear'}, "
        f"{arch(size)}",
        (f"head={probe.head}", *IMAGENET_PROTOCOL),
        IMAGENET,
        {probe.metric: TABLE_4[size][kind == "linear"]},
        probe.tolerance,
        probe.why,
        (f"head={probe.head}", *IMAGENET_PIPELINE, *probe.pipeline),
        probe.minutes[size],
        probe.gib[size],
        backbone=f"dinov2_{size}",
        stand_in="imagenet",
        note=LINEAR_NOTE if kind == "linear" and size == "vitg14" else probe.note,
    )


ROWS += [imagenet_row(kind, size) for kind in CLASSIFY for size in SIZES]

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
        f"DINOv2 paper (Oquab et al. 2023), Table 9: {dataset} M / H, {arch(size)}",
        ("head=retrieval",),
        revisited(dataset),
        {"test/mAP_M": medium, "test/mAP_H": hard},
        2.0,
        f"{ZERO_SHOT}, but the paper's input resolution is not known (224 px here, docs/retrieval.md)",
        ("experiment=retrieval_quickstart", "data.image_size=56"),
        MINUTES[size],
        GIB[size],
        backbone=f"dinov2_{size}",
    )
    for size, datasets in TABLE_9.items()
    for dataset, (medium, hard) in datasets.items()
]

BY_NAME = {row.name: row for row in ROWS}

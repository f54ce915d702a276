"""Segment from one (or K) examples without training: DINOv2 patch matches become SAM prompts.

`OneShotSegmenter.reference` reads the K reference images and masks once per episode; `segment` then runs one
backbone pass and one SAM image encoding per target, and sends all of the target's prompt sets through SAM's
decoder in one batched call. Two methods:

- ``matcher`` (Matcher-style, the default): target patches matched to the reference mask with a forward-and-reverse
  check; the matched patches clustered (k-means on their positions) into positive points, each with the box of its
  cluster's spread, plus one set with every point and the box of all matched patches; negative points at the
  patches least similar to the reference mean; the candidate masks scored against the reference (feature
  similarity to the reference mean, coverage of the matched patches, SAM's score) and the best ones merged.
- ``persam`` (PerSAM-style): one positive point at the matched patch most similar to the reference mean, one
  negative point at the least similar patch, one SAM call. PerSAM takes the best patch of the whole similarity map;
  here it is the best *matched* patch, so that an image matched against itself never prompts outside its mask.

Patch rule: a mask is resized and centre-padded as its image is (`PatchGrid`), and a patch is inside it when at
least ``min_coverage`` (default half) of its pixels are; when no patch is, the most covered ones are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn

from backbones.features import FeatureSpec, read_features
from oneshot import matching
from oneshot.matching import OneShotInputError, PatchGrid, check_image, check_mask
from sam.batched import ImageEmbedding
from sam.predictor import SamBoxPredictor

# as datamodules.transforms (not imported from there: albumentations and cv2 are slow imports)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NO_MATCH = (
    "no target patch matched the reference (forward-reverse check): the best reference match of every target "
    "patch lies outside the reference mask(s)"
)


@dataclass(frozen=True)
class Options:
    """The segmenter's options (keyword arguments of `OneShotSegmenter`).

    image_size: the long side the DINOv2 input is resized to (518 = 37 patches of ViT-14).
    n_clusters: positive points (k-means clusters of the matched patches), at most (matcher).
    n_negative: negative points at the least similar patches (matcher; persam always uses 1).
    min_coverage: the fraction of a patch a mask must cover for the patch to be inside it.
    use_boxes: give each prompt set the box of its cluster's spread (matcher).
    multimask: SAM's three candidates per set, the most confident kept.
    n_merge, score_margin: merge at most ``n_merge`` masks scoring within ``score_margin`` of the best (matcher).
    seed: k-means seed.
    """

    image_size: int = 518
    n_clusters: int = 8
    n_negative: int = 1
    min_coverage: float = 0.5
    use_boxes: bool = True
    multimask: bool = True
    n_merge: int = 3
    score_margin: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        least = {"image_size": 1, "n_clusters": 1, "n_negative": 0, "n_merge": 1, "seed": 0}
        for name, low in least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r}: give a whole number of at least {low}.")
        for name in ("use_boxes", "multimask"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: give True or False.")  # noqa: TRY004 (API: ValueError)
        if not is_number(self.min_coverage) or not 0 < self.min_coverage <= 1:
            raise ValueError(f"min_coverage={self.min_coverage!r}: give a fraction in (0, 1] (default 0.5).")
        if not is_number(self.score_margin) or not 0 <= self.score_margin < float("inf"):
            raise ValueError(f"score_margin={self.score_margin!r}: give a number of at least 0 (default 0.1).")


@dataclass
class Reference:
    """What the K reference images give, computed once per episode.

    features: ``(N, C)`` normalised features of the patches inside the reference masks, all K images.
    mean_feature: ``(C,)`` normalised mean of them.
    all_features: per reference image ``(h*w, C)`` normalised patch features (for the reverse check).
    patch_masks: per reference image ``(h*w,)`` bool, the patches inside its mask (the module's patch rule).
    """

    features: Tensor
    mean_feature: Tensor
    all_features: list[Tensor]
    patch_masks: list[Tensor]


@dataclass
class Segmentation:
    """One target's result.

    mask: ``(H, W)`` bool (all False when nothing matched). points: ``(P, 2)`` float32 xy pixels of every prompt
    point; point_labels: ``(P,)`` int64, 1 positive, 0 negative. boxes: ``(B, 4)`` float32 xyxy prompt boxes.
    scores: ``(M,)`` float32 of the masks merged (matcher: the selection score, the mean of feature similarity,
    matched-patch coverage and SAM's score; persam: SAM's score). note: why the mask is empty, else None.
    """

    mask: np.ndarray
    points: np.ndarray
    point_labels: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    note: str | None = None


class OneShotSegmenter:
    """A frozen DINOv2 backbone and SAM joined, without training (see the module docstring).

    Args:
        backbone: a frozen backbone with the hub API (`backbones.load_backbone`).
        sam: SAM's batched predictor.
        method: ``"matcher"`` or ``"persam"``.
        block: the backbone block whose normed patch features are matched (-1: the last).
        options: `Options` fields.
    """

    METHODS = ("matcher", "persam")

    def __init__(
        self, backbone: nn.Module, sam: SamBoxPredictor, method: str = "matcher", block: int = -1, **options: object
    ) -> None:
        if method not in self.METHODS:
            raise ValueError(f"method={method!r}: choose one of {', '.join(self.METHODS)}.")
        known = {f.name for f in fields(Options)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"Unknown option {unknown[0]}={options[unknown[0]]!r}: the options are {sorted(known)}.")
        self.options = Options(**options)
        n_blocks = getattr(backbone, "n_blocks", None) or len(backbone.blocks)
        if isinstance(block, bool) or not isinstance(block, int) or not -n_blocks <= block < n_blocks:
            raise ValueError(f"block={block!r}: give a block index from {-n_blocks} to {n_blocks - 1} (-1: the last).")
        self.block = block % n_blocks
        self.spec = FeatureSpec.of([self.block], norm=True)
        self.patch_size = int(backbone.patch_size)
        if self.options.image_size < self.patch_size:
            raise ValueError(
                f"image_size={self.options.image_size} is under one {self.patch_size}-pixel patch: give at least "
                f"{self.patch_size} (default 518)."
            )
        self.backbone, self.sam, self.method = backbone, sam, method

    def describe(self) -> dict[str, object]:
        """The method and every option, for results files."""
        return {"method": self.method, "block": self.block, **asdict(self.options)}

    def reference(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> Reference:
        """K reference images ``(H, W, 3)`` uint8 RGB and their masks ``(H, W)`` (bool, 0/1 or 0/255) -> `Reference`.

        Raises:
            OneShotInputError: no image, a count mismatch, a bad image, or a mask that is empty, all foreground,
                not 0/1, or of another size than its image; an image smaller than one patch after the resize.
        """
        if len(images) == 0 or len(images) != len(masks):
            raise OneShotInputError(
                f"Got {len(images)} reference image(s) and {len(masks)} mask(s): give at least one image and one "
                "mask per image."
            )
        all_features, patch_masks = [], []
        for k, (image, mask) in enumerate(zip(images, masks)):
            image = check_image(image, f"Reference image {k}")
            mask = check_mask(mask, image.shape[:2], f"Reference mask {k}")
            grid = self._grid(image, f"Reference image {k}")
            features = self._features(image, grid)
            coverage = grid.coverage(torch.tensor(mask)).to(features.device)
            all_features.append(features)
            patch_masks.append(matching.inside_patches(coverage, self.options.min_coverage))
        inside = torch.cat([f[m] for f, m in zip(all_features, patch_masks)])
        return Reference(inside, F.normalize(inside.mean(0), dim=0), all_features, patch_masks)

    def segment(self, reference: Reference, image: np.ndarray, embedding: ImageEmbedding | None = None) -> Segmentation:
        """A target ``(H, W, 3)`` uint8 RGB -> its `Segmentation`; an empty mask and a note when nothing matched.

        ``embedding``: the target already encoded by SAM (`sam.batched.encode_images`, many targets in one encoder
        call); without it SAM encodes the target here.

        Raises:
            OneShotInputError: a bad image, or one smaller than one patch after the resize.
        """
        image = check_image(image, "The target image")
        grid = self._grid(image, "The target image")
        target = self._features(image, grid)
        matched, _ = matching.forward_reverse_match(
            reference.features, target, torch.cat(reference.all_features), torch.cat(reference.patch_masks)
        )
        if not matched.any():
            return empty_segmentation(image.shape[:2], NO_MATCH)
        similarity = target @ reference.mean_feature
        if embedding is None:
            self.sam.set_image(image)
        else:
            self.sam.set_embedding(embedding)
        if self.method == "persam":
            return self._persam(grid, similarity, matched)
        return self._matcher(grid, target, reference.mean_feature, similarity, matched)

    def _persam(self, grid: PatchGrid, similarity: Tensor, matched: Tensor) -> Segmentation:
        best = similarity.masked_fill(~matched, -torch.inf).argmax()[None]
        worst = matching.least_similar(similarity, matched, 1)
        points = grid.centres(torch.cat([best, worst]).cpu())
        labels = torch.tensor([1] + [0] * len(worst))
        masks, scores = self.sam.predict_prompts(
            None, points[None].numpy(), labels[None].numpy(), multimask=self.options.multimask
        )
        return finish(masks[0], points, labels, torch.zeros(0, 4), scores)

    def _matcher(
        self, grid: PatchGrid, target: Tensor, mean: Tensor, similarity: Tensor, matched: Tensor
    ) -> Segmentation:
        opt = self.options
        index = torch.nonzero(matched).flatten().cpu()
        centres, patch_boxes = grid.centres(index), grid.boxes(index)
        labels, representative = matching.cluster_patches(centres, opt.n_clusters, opt.seed)
        positive = centres[representative]
        negative = grid.centres(matching.least_similar(similarity, matched, opt.n_negative).cpu())
        boxes, all_box = None, None
        if opt.use_boxes:
            boxes = matching.spread_boxes(patch_boxes, labels, len(representative))
            all_box = matching.spread_box(patch_boxes)
        sets = matching.prompt_sets(positive, negative, boxes, all_box)
        masks, sam_scores = self.sam.predict_prompts(
            None,
            sets["points"].numpy(),
            sets["labels"].numpy(),
            None if sets["boxes"] is None else sets["boxes"].numpy(),
            multimask=opt.multimask,
        )
        coverage = grid.coverage(torch.from_numpy(masks)).to(target.device)
        scored = matching.score_masks(coverage, target, mean, matched, torch.from_numpy(sam_scores))
        keep = matching.select_masks(scored["score"], opt.n_merge, opt.score_margin).cpu()
        points = torch.cat([positive, negative])
        point_labels = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).long()
        set_boxes = torch.zeros(0, 4) if sets["boxes"] is None else sets["boxes"]
        return finish(masks[keep.numpy()].any(0), points, point_labels, set_boxes, scored["score"][keep].cpu())

    def _grid(self, image: np.ndarray, what: str) -> PatchGrid:
        """The image's `PatchGrid`; OneShotInputError when a resized side is under one patch."""
        height, width = image.shape[:2]
        grid = PatchGrid.plan(height, width, self.options.image_size, self.patch_size)
        if min(grid.input_size) < self.patch_size:
            raise OneShotInputError(
                f"{what} is {width}x{height} (WxH); resized to a long side of image_size={self.options.image_size} "
                f"it is {grid.input_size[1]}x{grid.input_size[0]}, a side under one {self.patch_size}-pixel patch. "
                "Fix: pass an image whose short side is at least "
                f"{self.patch_size}/{self.options.image_size} of its long side, or raise image_size."
            )
        return grid

    @torch.no_grad()
    def _features(self, image: np.ndarray, grid: PatchGrid) -> Tensor:
        """``(H, W, 3)`` uint8 -> ``(h*w, C)`` normalised patch features of the block, on the backbone's device."""
        # torch.tensor copies: a dataset's or a decoder's image may be read-only, which torch.from_numpy warns about
        x = TF.to_dtype(torch.tensor(image).permute(2, 0, 1), torch.float32, scale=True)
        if tuple(x.shape[-2:]) != grid.input_size:
            x = TF.resize(x, list(grid.input_size), interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        x = TF.normalize(x.clamp(0, 1), IMAGENET_MEAN, IMAGENET_STD)
        device = next(self.backbone.parameters()).device
        tokens = read_features(self.backbone, x[None].to(device), self.spec)["tokens"][self.block][0]
        return F.normalize(tokens.flatten(1).T, dim=1)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finish(mask: np.ndarray, points: Tensor, labels: Tensor, boxes: Tensor, scores: Tensor) -> Segmentation:
    """A `Segmentation` of numpy arrays, with a note when SAM's chosen mask is empty."""
    mask = np.asarray(mask, dtype=bool)
    note = None if mask.any() else "SAM gave empty masks for every prompt set"
    return Segmentation(
        mask,
        np.asarray(points, dtype=np.float32).reshape(-1, 2),
        np.asarray(labels, dtype=np.int64),
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(scores, dtype=np.float32).reshape(-1),
        note,
    )


def empty_segmentation(size: tuple[int, int], note: str) -> Segmentation:
    """An all-False ``size`` mask with no prompts and ``note``."""
    none = np.zeros(0, dtype=np.float32)
    return Segmentation(
        np.zeros(size, dtype=bool), none.reshape(0, 2), np.zeros(0, np.int64), none.reshape(0, 4), none, note
    )

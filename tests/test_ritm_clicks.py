"""The interactive clicks and NoC against RITM's own code (tests/reference/ritm: its clicker.py and
compute_noc_metric, vendored unmodified but for numpy 2, MIT licence).

Random blob objects, predictions with errors of every kind (added and removed blobs, shifts, empty and full
predictions) and, in a third of the cases, an ignored band along the object boundary (RITM's label -1, GrabCut's
unlabelled band). Ties: several pixels often share the largest distance (rectangles, thin strokes); RITM takes the
first of them in row-major order (`np.where(dt == max)[0]`) and `sam.clicks.next_click` the first maximum of
`argmax`, the same pixel, on the same OpenCV distance map (the same `cv2.distanceTransform` call on the same padded
mask), so no case is skipped: the tests count the tied cases and require some, so that the tie rule is exercised.
A tie between the largest missed and the largest false distance goes negative in both.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation, binary_erosion

from sam.clicks import NOC_MAX_CLICKS, Click, boundary_distance, clicks_to_reach, error_masks, first_click, next_click
from sam.interactive import STOP_IOU, InteractiveSegmenter
from sam.model import build_sam
from tests.conftest import TINY_SAM
from tests.reference.ritm.clicker import Click as RitmClick
from tests.reference.ritm.clicker import Clicker
from tests.reference.ritm.noc import compute_noc_metric


def ellipse(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(1, max(1.5, h / 2.5)), rng.uniform(1, max(1.5, w / 2.5))
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def rectangle(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    mask = np.zeros((h, w), bool)
    mask[y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True  # flat tops: tied maxima
    return mask


def blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A union of 1-4 ellipses or rectangles, sometimes with a hole; never empty."""
    mask = np.zeros((h, w), bool)
    while not mask.any():
        for _ in range(rng.integers(1, 5)):
            mask |= (rectangle if rng.random() < 0.3 else ellipse)(rng, h, w)
        if rng.random() < 0.3:
            mask &= ~ellipse(rng, h, w)
    return mask


def prediction(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """`gt` with errors: blobs added and removed, a shift, or an unrelated blob, empty or full."""
    h, w = gt.shape
    kind = rng.integers(0, 6)
    if kind == 0:
        return np.zeros_like(gt)
    if kind == 1:
        return np.ones_like(gt)
    if kind == 2:
        return blob(rng, h, w)
    if kind == 3:
        return np.roll(gt, (rng.integers(-3, 4), rng.integers(-3, 4)), (0, 1))
    pred = gt.copy()
    for _ in range(rng.integers(1, 4)):
        if rng.random() < 0.5:
            pred |= ellipse(rng, h, w)
        else:
            pred &= ~ellipse(rng, h, w)
    return pred


def labelled_gt(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """RITM's ground truth `(H, W)` int: 1 object, 0 background, -1 ignored (a band along the boundary)."""
    gt = blob(rng, h, w)
    labels = gt.astype(np.int64)
    inside = binary_erosion(gt, iterations=1)
    if rng.random() < 1 / 3 and inside.any():  # an object is never all ignored
        labels[binary_dilation(gt, iterations=2) & ~inside] = -1
    return labels


def ritm_click(click: RitmClick) -> Click:
    y, x = click.coords
    return Click(int(x), int(y), bool(click.is_positive))


def tied(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray, clicked: list[Click], click: Click) -> bool:
    """Whether several pixels share the largest distance of the map `click` was taken from."""
    missed, false = error_masks(pred, gt, ignore)
    distance = boundary_distance(missed if click.positive else false)
    for c in clicked:
        distance[c.y, c.x] = 0
    return int((distance == distance.max()).sum()) > 1


def test_next_click_is_ritms_click_at_every_step() -> None:
    """600 (gt, prediction) pairs, 1-4 clicks each on the same prediction (each next click must avoid the pixels
    clicked before: RITM's `not_clicked_map`): the same pixel and sign as RITM's `Clicker` every time."""
    rng = np.random.default_rng(24)
    steps = ties = no_error = 0
    for _ in range(600):
        h, w = rng.integers(6, 64, 2)
        labels = labelled_gt(rng, h, w)
        gt, ignore = labels == 1, labels == -1
        pred = prediction(rng, gt)
        clicker = Clicker(gt_mask=labels)
        clicked: list[Click] = []
        for _ in range(rng.integers(1, 5)):
            ours = next_click(pred, gt, ignore, clicked)
            if ours is None:  # no error left: no click (RITM would click the top-left pixel; its loop has stopped)
                missed, false = error_masks(pred, gt, ignore)
                assert not missed.any() and not false.any()
                no_error += 1
                break
            clicker.make_next_click(pred)
            theirs = ritm_click(clicker.get_clicks()[-1])
            assert ours == theirs, (h, w, clicked)
            ties += tied(pred, gt, ignore, clicked, ours)
            clicked.append(ours)
            steps += 1
    assert steps > 1000 and ties > 100 and no_error < 60, (steps, ties, no_error)


def test_first_click_is_ritms_click_on_an_empty_prediction() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        h, w = rng.integers(1, 48, 2)
        labels = labelled_gt(rng, h, w)
        clicker = Clicker(gt_mask=labels)
        clicker.make_next_click(np.zeros((h, w), bool))
        assert first_click(labels == 1, labels == -1) == ritm_click(clicker.get_clicks()[0])


def test_ties_between_missed_and_false_go_negative() -> None:
    gt = np.zeros((9, 20), bool)
    gt[2:7, 2:7] = True
    pred = gt.copy()
    pred[2:7, 2:7] = False  # missed 5x5, peak 3
    pred[2:7, 12:17] = True  # false 5x5, peak 3
    clicker = Clicker(gt_mask=gt.astype(np.int64))
    clicker.make_next_click(pred)
    assert next_click(pred, gt) == ritm_click(clicker.get_clicks()[0]) == Click(14, 4, False)


class CorrectingPredictor:
    """A simulated interactive model: a starting prediction with errors, then each click sets the pixels within
    `radius` of it to the ground truth. Its mask is a function of the clicks so far, as RITM's predictor's is."""

    def __init__(self, start: np.ndarray, gt: np.ndarray, radius: float) -> None:
        self.start, self.gt, self.radius = start, gt, radius
        self.yy, self.xx = np.mgrid[: gt.shape[0], : gt.shape[1]]

    def __call__(self, clicks: list[Click]) -> np.ndarray:
        mask = self.start.copy()
        for click in clicks:
            near = (self.yy - click.y) ** 2 + (self.xx - click.x) ** 2 <= self.radius**2
            mask[near] = self.gt[near]
        return mask


def ritm_session(labels: np.ndarray, predictor: CorrectingPredictor) -> tuple[list[Click], list[float]]:
    """RITM's `evaluate_sample` (isegm/inference/evaluation.py, its defaults: 20 clicks, stop at IoU 0.90, and
    `get_iou` with the ignore label) with `predictor` in place of the network."""
    clicker = Clicker(gt_mask=labels)
    pred = np.zeros(labels.shape, bool)
    ious = []
    for _ in range(NOC_MAX_CLICKS):
        clicker.make_next_click(pred)
        pred = predictor([ritm_click(c) for c in clicker.get_clicks()])
        keep = labels != -1
        ious.append(((pred & (labels == 1)) & keep).sum() / ((pred | (labels == 1)) & keep).sum())
        if ious[-1] >= STOP_IOU:
            break
    return [ritm_click(c) for c in clicker.get_clicks()], ious


@pytest.fixture(scope="module")
def segmenter_sam() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sam("vit_b", **TINY_SAM).eval()


def simulated_segmenter(sam: torch.nn.Module, clicks: int, predictor: CorrectingPredictor) -> InteractiveSegmenter:
    """The project's loop (first click, RITM's next clicks, the 0.90 stop past N, the 20-click cap) with
    `predictor` answering in place of SAM's decoder: three equal masks at the first click, then one (and 1x1
    logits for the mask input, which `predictor` does not read)."""
    segmenter = InteractiveSegmenter(sam, clicks=clicks)

    def decode(rows: list[list[Click]], mask_input: torch.Tensor | None, multimask: bool) -> tuple:
        masks = torch.from_numpy(np.stack([predictor(row) for row in rows]))[:, None]
        masks = masks.repeat(1, 3 if multimask else 1, 1, 1)
        return masks, torch.zeros(masks.shape[:2]), torch.zeros(*masks.shape[:2], 1, 1)  # logits: never read

    segmenter._decode = decode
    segmenter.box_predictor.set_image = lambda image: None
    return segmenter


@pytest.mark.parametrize("clicks", [1, 9])
def test_sessions_make_ritms_clicks_and_noc(segmenter_sam: torch.nn.Module, clicks: int) -> None:
    """300 simulated sessions: the project's loop makes RITM's clicks one by one (with N = 1 click by click to the
    end, as RITM stops at IoU 0.90; with N = 9 RITM's clicks are the start of the project's) and NoC@85/@90, per
    session and as the mean, equal RITM's `compute_noc_metric`."""
    rng = np.random.default_rng(clicks)
    ritm_ious, our_ious, capped = [], [], 0
    for _ in range(300):
        h, w = rng.integers(12, 48, 2)
        labels = labelled_gt(rng, h, w)
        gt, ignore = labels == 1, labels == -1
        start = np.zeros_like(gt) if rng.random() < 0.3 else prediction(rng, gt)
        predictor = CorrectingPredictor(start, gt, radius=float(rng.uniform(1, 6)))
        ritm_clicks, ious = ritm_session(labels, predictor)
        track = simulated_segmenter(segmenter_sam, clicks, predictor).run(
            np.zeros((h, w, 3), np.uint8), gt[None], ignore
        )["top"]
        ours = track.clicks[0]
        assert ours[: len(ritm_clicks)] == ritm_clicks
        if clicks == 1:
            assert len(ours) == len(ritm_clicks) and track.ious[0] == pytest.approx(ious)
        assert len(track.ious[0]) >= clicks
        ritm_ious.append(np.array(ious))
        our_ious.append(track.ious[0])
        capped += len(ritm_clicks) == NOC_MAX_CLICKS and max(ious) < 0.85
    thresholds = [0.85, 0.90]
    (ritm_noc85, ritm_noc90), _ = compute_noc_metric(ritm_ious, thresholds, max_clicks=NOC_MAX_CLICKS)
    assert clicks_to_reach(our_ious, 0.85).mean() == pytest.approx(ritm_noc85)
    assert clicks_to_reach(our_ious, 0.90).mean() == pytest.approx(ritm_noc90)
    for theirs, ours in zip(ritm_ious, our_ious):
        assert clicks_to_reach([ours], 0.9)[0] == compute_noc_metric([theirs], [0.9])[0][0]
    assert 10 < capped < 290, capped  # sessions that hit the 20-click cap, and sessions that do not


def test_noc_counts_a_miss_as_20_whatever_n() -> None:
    ious = [[0.5, 0.95], [0.1] * 25, [0.2] * 3, [0.86] + [0.1] * 30]
    ritm, _ = compute_noc_metric([np.array(row) for row in ious], [0.85, 0.9])
    assert [clicks_to_reach(ious, t).tolist() for t in (0.85, 0.9)] == [[2, 20, 20, 1], [2, 20, 20, 20]]
    assert [clicks_to_reach(ious, t).mean() for t in (0.85, 0.9)] == pytest.approx(ritm)

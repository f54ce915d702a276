# fmt: off
# ruff: noqa
# Vendored test oracle, never imported by the project's code (only by tests/test_ritm_clicks.py).
# Source: https://github.com/SamsungLabs/ritm_interactive_segmentation, commit b9b44603672e15aa0be878b54fd26e7e1c5d2311,
# path isegm/inference/utils.py, lines 79-96: compute_noc_metric only. MIT licence: Copyright (c) 2021 Samsung
# Electronics Co., Ltd.; see LICENSE in this folder.
# Modifications: these header lines, the numpy import (the file's other imports and functions are left out), and
# dtype=np.int -> dtype=int (np.int was removed in numpy 1.24).
import numpy as np


def compute_noc_metric(all_ious, iou_thrs, max_clicks=20):
    def _get_noc(iou_arr, iou_thr):
        vals = iou_arr >= iou_thr
        return np.argmax(vals) + 1 if np.any(vals) else max_clicks

    noc_list = []
    over_max_list = []
    for iou_thr in iou_thrs:
        scores_arr = np.array([_get_noc(iou_arr, iou_thr)
                               for iou_arr in all_ious], dtype=int)

        score = scores_arr.mean()
        over_max = (scores_arr == max_clicks).sum()

        noc_list.append(score)
        over_max_list.append(over_max)

    return noc_list, over_max_list

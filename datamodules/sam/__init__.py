"""SAM's test sets: COCO-format instances (COCO, LVIS), the interactive sets (GrabCut, Berkeley, DAVIS), BSDS500."""

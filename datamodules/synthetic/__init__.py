"""Small generated datasets in the real layouts (ADE20k, NYUd, COCO, FSS-1000, BSDS500), for tests and quickstarts."""

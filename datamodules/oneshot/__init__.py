"""One-shot segmentation episodes: the sampler and datamodule base, FSS-1000 / COCO-20i / PerSeg readers."""

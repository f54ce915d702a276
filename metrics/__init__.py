"""Task metrics as torchmetrics `Metric`s: segmentation (mIoU, aAcc) and depth (AbsRel, RMSE, delta...)."""

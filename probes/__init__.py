"""LightningModules that train and evaluate heads on a frozen backbone: one shape for every probe.

Trained probes (`SegmentationProbe`, `DepthProbe`) share `probes.base.HeadGridProbe`; the classification evaluations
(few-shot, k-NN, linear) embed once and share `probes.frozen_features.FrozenFeatureEvaluation`.
"""

"""Reproduce the papers' numbers with one command: `python -m reproduce ROW... | --all` (docs/reproduce.md, "Reproduce the
papers").

Design: rows are data (`rows.py`: overrides, published value, source, tolerance, estimate), and the runner
(`runner.py`) composes each row's `python train.py OVERRIDES` config with Hydra's compose API and calls `train.run`
in this process. That is the simpler of the two designs: no config is restated (a row is the command line a user
would type), one interpreter serves every row (imports once, a row's failure is an exception caught and recorded),
and `--pipeline` only swaps the data and model overrides for the offline generators of the quickstarts, or for a
stand-in in the real dataset's layout (`stand_ins.py`: VOC 2012, Cityscapes, KITTI, ImageNet). `plan.py` is
`--dry-run`, `table.py` the Markdown table.

Pipeline models: reproduce is product code and does not read tests/, so `--pipeline` takes `--checkpoint PATH
--embed-dim --depth --num-heads` (the tests pass tests/fixtures/dinov2/tiny_vit14.pth), or by default builds seeded
random weights of that size (`backbone.random_fallback=true`, with the torch.hub cache moved aside for the run so that
a cached real checkpoint is never loaded into the tiny model); SAM is a tiny random one (`sam.random_weights=true`).
"""

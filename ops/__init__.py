"""Computations the probes are made of, with no files and no Lightning: losses and their kernels, learning-rate
schedules, sliding-window inference, the classifiers of the classification evaluations, the non-finite checks."""

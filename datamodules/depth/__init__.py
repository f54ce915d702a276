"""Depth estimation: NYU-Depth v2 and KITTI in the depth toolbox's layout, their files and transforms."""

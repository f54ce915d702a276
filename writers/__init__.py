"""Everything that writes result files, each written atomically: label and depth PNGs, mask overlays, tables."""

"""Small helpers shared by every package (kept free of model and data code)."""

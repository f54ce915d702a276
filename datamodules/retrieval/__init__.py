"""Revisited Oxford and Paris: database images and cropped queries for the retrieval test loop."""

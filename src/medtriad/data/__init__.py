"""Data layer: readers for the real formats, manifests, datasets, the demo cohort."""

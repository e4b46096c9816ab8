"""Image-quality metrics: FID, KID, IS (Inception-v3 features) and SWD (no network).

`registry.compute_metric` is the entry point for training loops, `calc_metrics.py` the
command-line tool, and `convert_inception` turns published Inception weights into the
Keras weights file the Inception metrics load.
"""

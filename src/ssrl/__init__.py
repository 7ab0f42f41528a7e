"""SSRL: self-supervised speaker representation learning (DINO -> k-means -> SSRL).

The library behind the Snakemake workflow. Modules are layered (see DESIGN):
audio, manifest -> augment, features -> data, models -> dino, ssrl, cluster,
metrics -> train -> tables. Nothing here imports Snakemake.
"""

__version__ = "0.1.0"
SAMPLE_RATE = 16000

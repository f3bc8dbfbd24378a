"""The geometry of categorical and hierarchical concepts (Park, Choe, Jiang & Veitch, 2024).

- :mod:`~paperlab.geometry.hierarchy`: the shipped WordNet 3.0 noun subset and concept extraction;
- :mod:`~paperlab.geometry.lm`: the synthetic corpus generated from the hierarchy and the tiny LM;
- :mod:`~paperlab.geometry.estimate`: whitening (the causal inner product), the vector estimator, the
  statistics of the paper;
- :mod:`~paperlab.geometry.synthetic`: unembeddings with a planted hierarchical structure;
- :mod:`~paperlab.geometry.hf`: optional, a local Hugging Face model's unembedding;
- :mod:`~paperlab.geometry.experiments`: the chapter's experiments (``python -m paperlab run geometry``).
"""

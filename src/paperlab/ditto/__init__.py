"""DITTO (Shaikh et al., 2024): aligning a language model to one user from a handful of demonstrations.

- :mod:`paperlab.ditto.data`: synthetic authors who write short emails, each in a measurable style;
- :mod:`paperlab.ditto.judge`: two style classifiers (stand-ins for the paper's GPT-4 judge) and win rates;
- :mod:`paperlab.ditto.methods`: few-shot prompting, SFT, SPIN and DITTO on the toolkit's tiny GPT;
- :mod:`paperlab.ditto.experiments`: the chapter's experiment (``book/10-ditto.md``);
- :mod:`paperlab.ditto.analysis`: win rates from the scored runs, per seed, per author and method by method;
- :mod:`paperlab.ditto.explore`: its live explorer;
- :mod:`paperlab.ditto.real`: the few-shot baseline and the pairwise judge with a reader's real model.
"""

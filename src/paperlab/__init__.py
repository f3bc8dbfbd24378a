"""paperlab: one week of machine-learning papers, re-implemented from scratch and reproduced small.

The chapters in ``book/`` import this package; every experiment, model and metric lives here once.
"""

__version__ = "0.1.0"

"""Evaluation: task files, a sandbox for generated code, scoring, Pareto fronts.

- ``sandbox``: run HumanEval-shaped programs in a confined child process.
- ``tasks``: read task files (perplexity text, multiple choice, exact match, code) and
  detect their format from the fields.
- ``passk``: the unbiased pass@k estimator (Chen et al. 2021) and scoring of given samples.
- ``harness``: run a task through a ``Scorer`` (an unsplit HF model, or a split model
  with the codec in the loop).
- ``pareto``: non-dominated points under objectives with directions.
"""

"""The image classifier itself, shared by training and serving: what a model is and how it runs.

It imports neither BentoML nor HTTP code; ``training`` writes models with it and ``service`` serves them.
"""

__version__ = "0.1.0"  # the project's version (pyproject.toml reads it from here)

"""distill: a data-distillation pipeline for LLMs.

Stages read and write Arrow datasets under ``runs/<run>/<NN>-<stage>/`` with a manifest each;
see README.md for the commands and ../DESIGN for the contract.
"""

__version__ = "0.1.0"

"""Synthesize (or validate) a keyword-spotting corpus in proxopt's .npz format.

    python examples/speech/make_corpus.py --out corpus.npz [--tiny] [--seed 0] [--no-noise]
    python examples/speech/make_corpus.py --check mine.npz

Same as ``python -m proxopt.speech.data``; see that module for the format.
"""

import sys

from proxopt.speech.data import main

if __name__ == "__main__":
    sys.exit(main())

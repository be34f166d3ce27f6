"""Keyword spotting with proxopt: four runs side by side (see proxopt.speech.kws).

    python examples/speech/kws.py [--data FILE.npz] [--epochs 15] [--l1 1e-3] [--group-lasso 0.2] [--out runs/kws]

Same as ``python -m proxopt.speech.kws``; needs espeak-ng for the default
synthesized corpus (``apt-get install -y espeak-ng``).
"""

import sys

from proxopt.speech.kws import main

if __name__ == "__main__":
    sys.exit(main())

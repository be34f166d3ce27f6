"""Log-mel denoising (MSE) with proxopt: four runs side by side (see proxopt.speech.denoise).

    python examples/speech/denoise.py [--data CLEAN.npz] [--epochs 15] [--out runs/denoise]

Same as ``python -m proxopt.speech.denoise``.
"""

import sys

from proxopt.speech.denoise import main

if __name__ == "__main__":
    sys.exit(main())

"""Applications that use proxopt (not part of the installed package); run them
from the repository root, e.g. ``python -m examples.speech.kws``."""

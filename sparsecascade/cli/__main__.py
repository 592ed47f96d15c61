"""``python -m sparsecascade.cli`` (what torchrun launches: ``torchrun ... -m sparsecascade.cli train ...``)."""
import sys

from . import main

sys.exit(main())

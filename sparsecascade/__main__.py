"""``python -m sparsecascade``: the ``sparsecascade`` command."""
import sys

from .cli import main

sys.exit(main())

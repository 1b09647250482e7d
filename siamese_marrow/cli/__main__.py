"""``python -m siamese_marrow.cli``: the same as the ``siamese-marrow`` command."""

import sys

from . import main

sys.exit(main())

"""``python -m captum_clip.covar build|eval`` (works under ``torchrun -m``)."""

import sys

from captum_clip.commands.covar import main

if __name__ == "__main__":
    sys.exit(main())

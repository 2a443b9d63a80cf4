import sys

from captum_clip.cli import main

sys.exit(main())

"""`python -m replicante_poller`."""
import sys

from .cli import main

sys.exit(main())

"""`python scheduler.py [run|status|migrate|demo|seed]`: the OCR pool's control process."""

import sys

from control_plane.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

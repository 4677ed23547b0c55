"""Stage CLI: `python -m stages <stage> [--params params.yaml] [key=value ...]`."""
import sys

from stages._cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

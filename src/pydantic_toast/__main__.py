"""``python -m pydantic_toast``: the command line, as the ``pydantic-toast`` script runs it."""

import sys

from pydantic_toast.integrations.cli import main

if __name__ == "__main__":
    sys.exit(main())

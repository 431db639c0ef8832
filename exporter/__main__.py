import sys

from exporter.cli import main

# Guarded: a worker process started with spawn imports this module too.
if __name__ == "__main__":
    sys.exit(main())

"""``python -m batchphone``."""

from batchphone.cli import main

if __name__ == "__main__":
    main(prog_name="batchphone")

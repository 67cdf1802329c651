"""``python -m batchphone.emulator``: the ``batchphone emulator`` command on its own."""

from batchphone.emulator.cli import emulator_command

if __name__ == "__main__":
    emulator_command(prog_name="batchphone emulator")

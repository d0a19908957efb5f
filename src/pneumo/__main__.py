"""``python -m pneumo ...``: the CLI without the installed ``pneumo`` entry point."""

from pneumo.cli import main

main()

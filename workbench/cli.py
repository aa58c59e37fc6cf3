"""Running an experiment's ``main`` as a command: a user mistake is one line on stderr, not a traceback.

Every check in the workbench raises one of ``USER_ERRORS`` with a message that names the offending
item (a trace id, a file and line, a flag), so the message alone says what to fix.
``KFH_TRACEBACK=1`` shows the full traceback instead.  Warnings print as one line each, and
Ctrl-C says how to resume.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, RuntimeError, ImportError)


def run_command(main: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; the exit status for ``sys.exit`` (0, 2 on a user error, 130 on Ctrl-C)."""
    prog = Path(sys.argv[0]).name

    def show(message, category, *_args, **_kw) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    try:
        main(sys.argv[1:] if argv is None else argv)
    except USER_ERRORS as e:
        if os.environ.get("KFH_TRACEBACK") == "1":
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; run the same command again to resume from the traces it finished "
              "(kept in OUT/cache unless --no-cache)", file=sys.stderr)
        return 130
    return 0

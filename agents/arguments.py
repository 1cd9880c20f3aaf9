"""The command lines' argument parser: argparse's, with errors in one line.

argparse prints its whole usage (over 30 lines for `agents.train`) above
the one line that says what was wrong. A user who mistyped a flag needs
that line, the option they probably meant, and where to read the others.
"""

import argparse
import difflib

_UNRECOGNIZED = "unrecognized arguments: "


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line naming the bad
    input, the nearest option to a mistyped one, and `--help`, with
    argparse's exit status 2."""

    def error(self, message):
        hint = ""
        if message.startswith(_UNRECOGNIZED):
            options = [
                option
                for action in self._actions
                for option in action.option_strings
            ]
            for word in message[len(_UNRECOGNIZED) :].split():
                close = difflib.get_close_matches(
                    word.split("=")[0], options, n=1
                )
                if word.startswith("-") and close:
                    hint = f"; did you mean {close[0]}?"
                    break
        self.exit(
            2, f"{self.prog}: error: {message}{hint} (see {self.prog} --help)\n"
        )

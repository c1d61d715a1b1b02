"""Screening a plain SQL script before ``psql`` runs it: no psql meta-command gets through.

A plain SQL dump comes from storage, which is untrusted. ``psql`` executes backslash commands
(``\\!`` runs a shell, ``\\c`` switches database, ``\\o``/``\\w`` write files, ``\\i`` reads
them, ``\\copy … program`` runs a program, ``\\setenv``, ``\\gexec``, ``\\lo_*``…) wherever a
backslash appears outside a quoted string, a comment or COPY data — not only at the start of a
line. So the screen lexes the script the way psql does and refuses **every** backslash outside
those, except the two lines ``pg_dump`` (15.14 and later) writes itself: ``\\restrict KEY`` at the
top and ``\\unrestrict KEY`` at the end, which only *stop* psql from running meta-commands.
``\\connect`` is refused too: pg_dump writes it only with ``-C`` (and pg_dumpall), and a restore
goes into one side database, never another.

COPY data (after ``COPY … FROM stdin;``, until a line ``\\.``) is data: backslashes there are
escapes (``\\N``, ``\\t``), skipped without lexing. A line starting with ``\\.`` always ends the data
for the screen; if anything but the line end follows, the script is refused (psql might read it
otherwise). ``COPY … PROGRAM`` is refused as well.

A quoted string's end depends on ``standard_conforming_strings``, which a script can switch (even
through a function), and psql follows the server. The screen therefore lexes every line under both
settings at once and refuses a backslash either reading finds, or a COPY one reading sees and the
other does not. It reads the file a line at a time (a line outside COPY data is at most
``MAX_SQL_LINE`` bytes), so memory stays constant for a dump of any size.
"""

import re
from dataclasses import dataclass
from pathlib import Path

MAX_SQL_LINE = 16 * 1024 * 1024
READ_BYTES = 1024 * 1024
ALLOWED_LINE = re.compile(rb"^\\(?:un)?restrict [A-Za-z0-9]{1,256}[ \t]*\r?\n?$")
_IDENT = re.compile(rb"[A-Za-z0-9_$\x80-\xff]")
_DOLLAR = re.compile(rb"\$([A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")
_NORMAL_STOP = re.compile(rb"['\"$\\;]|--|/\*")
_COPY_FROM_STDIN = re.compile(rb"^\s*COPY\b.*\bFROM\s+STDIN\b", re.S)
_PROGRAM = re.compile(rb"^\s*COPY\b.*\bPROGRAM\b", re.S)
_SKELETON_MAX = 4096


class UnsafeScriptError(Exception):
    """The script holds something psql would execute besides SQL; ``line`` is 1-based."""

    def __init__(self, message: str, *, line: int):
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass
class ScreenResult:
    """A script that passed: its size, lines, and the COPY blocks skipped as data."""

    bytes_read: int
    lines: int
    copy_blocks: int


class _Lexer:
    """psql's view of one line after another: inside what, and the current statement's skeleton.

    ``backslash_quote`` is the reading with ``standard_conforming_strings = off`` (a backslash
    escapes the next character inside '…' as it does inside E'…').
    """

    def __init__(self, backslash_quote: bool):
        self.backslash_quote = backslash_quote
        self.state = "normal"
        self.tag = b""
        self.depth = 0
        self.skeleton = bytearray()

    def _keep(self, text: bytes) -> None:
        if len(self.skeleton) < _SKELETON_MAX:
            self.skeleton += text[: _SKELETON_MAX - len(self.skeleton)]

    def feed(self, line: bytes, number: int) -> bool:
        """Lex one line; return True when a ``COPY … FROM stdin`` statement ended on it."""
        copy_starts = False
        i, end = 0, len(line)
        while i < end:
            if self.state == "normal":
                match = _NORMAL_STOP.search(line, i)
                if match is None:
                    self._keep(line[i:])
                    break
                start = match.start()
                self._keep(line[i:start])
                token = match.group()
                if token == b"\\":
                    self._meta(line, start, number)
                    i = end
                elif token == b";":
                    copy_starts = self._statement_end(number) or copy_starts
                    i = start + 1
                elif token == b"--":
                    i = end
                elif token == b"/*":
                    self.state, self.depth, i = "block", 1, start + 2
                elif token == b'"':
                    self.state, i = "dquote", start + 1
                    self._keep(b" ident ")
                elif token == b"'":
                    escaped = start > 0 and line[start - 1:start] in (b"e", b"E") and not (
                        start > 1 and _IDENT.match(line, start - 2))
                    self.state = "estring" if escaped or self.backslash_quote else "squote"
                    self._keep(b" literal ")
                    i = start + 1
                else:
                    dollar = _DOLLAR.match(line, start)
                    if dollar and not (start > 0 and _IDENT.match(line, start - 1)):
                        self.state, self.tag, i = "dollar", dollar.group(), dollar.end()
                        self._keep(b" literal ")
                    else:
                        self._keep(b"$")
                        i = start + 1
            elif self.state == "squote":
                close = line.find(b"'", i)
                if close < 0:
                    break
                self.state, i = "normal", close + 1
            elif self.state == "estring":
                i = self._estring(line, i)
            elif self.state == "dquote":
                close = line.find(b'"', i)
                if close < 0:
                    break
                self.state, i = "normal", close + 1
            elif self.state == "dollar":
                close = line.find(self.tag, i)
                if close < 0:
                    break
                self.state, i = "normal", close + len(self.tag)
            else:
                i = self._block(line, i)
        return copy_starts

    def _estring(self, line: bytes, i: int) -> int:
        end = len(line)
        while i < end:
            quote, slash = line.find(b"'", i), line.find(b"\\", i)
            if quote < 0 and slash < 0:
                return end
            if slash >= 0 and (quote < 0 or slash < quote):
                i = slash + 2
                continue
            self.state = "normal"
            return quote + 1
        return end

    def _block(self, line: bytes, i: int) -> int:
        end = len(line)
        while i < end:
            opening, closing = line.find(b"/*", i), line.find(b"*/", i)
            if closing < 0 and opening < 0:
                return end
            if opening >= 0 and (closing < 0 or opening < closing):
                self.depth, i = self.depth + 1, opening + 2
                continue
            self.depth, i = self.depth - 1, closing + 2
            if self.depth == 0:
                self.state = "normal"
                return i
        return end

    def _meta(self, line: bytes, start: int, number: int) -> None:
        if start == 0 and not self.skeleton.strip() and ALLOWED_LINE.match(line):
            return
        command = re.match(rb"\\[^\s\\]{0,20}", line[start:]).group().decode("utf-8", "replace")
        raise UnsafeScriptError(f"a psql meta-command ({command}) outside COPY data; plain SQL dumps may hold "
                                "SQL and COPY data only", line=number)

    def _statement_end(self, number: int) -> bool:
        statement = bytes(self.skeleton).upper()
        self.skeleton.clear()
        if _PROGRAM.match(statement):
            raise UnsafeScriptError("COPY … PROGRAM runs a program on the server", line=number)
        return bool(_COPY_FROM_STDIN.match(statement))


def screen_plain_sql(path: str | Path) -> ScreenResult:
    """Read the whole script and raise ``UnsafeScriptError`` at the first thing psql would run besides SQL."""
    lexers = (_Lexer(backslash_quote=False), _Lexer(backslash_quote=True))
    number = copy_blocks = total = 0
    in_copy, at_line_start = False, True
    with open(path, "rb") as handle:
        while True:
            piece = handle.readline(READ_BYTES)
            if not piece:
                break
            total += len(piece)
            starts_line = at_line_start
            at_line_start = piece.endswith(b"\n")
            if starts_line:
                number += 1
            if in_copy:
                if starts_line and piece.startswith(b"\\."):
                    if piece.rstrip(b"\r\n") != b"\\.":
                        raise UnsafeScriptError("a line starting with \\. that is not exactly the end of COPY "
                                                "data", line=number)
                    in_copy = False
                continue
            if not at_line_start:
                rest = _rest_of_line(handle, len(piece), number)
                total += len(rest)
                piece += rest
                at_line_start = True
            seen = [lexer.feed(piece, number) for lexer in lexers]
            if seen[0] != seen[1]:
                raise UnsafeScriptError("COPY … FROM stdin reads differently with standard_conforming_strings "
                                        "on and off", line=number)
            if seen[0]:
                in_copy, copy_blocks = True, copy_blocks + 1
    return ScreenResult(bytes_read=total, lines=number, copy_blocks=copy_blocks)


def _rest_of_line(handle, size: int, number: int) -> bytes:
    """The rest of a SQL line longer than one read, whose first ``size`` bytes were read."""
    parts = [b""]
    while not parts[-1].endswith(b"\n"):
        more = handle.readline(READ_BYTES)
        if not more:
            break
        size += len(more)
        if size > MAX_SQL_LINE:
            raise UnsafeScriptError(f"a SQL line longer than {MAX_SQL_LINE} bytes outside COPY data", line=number)
        parts.append(more)
    return b"".join(parts)

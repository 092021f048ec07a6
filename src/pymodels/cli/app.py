"""Parsing the command line, running one command, and turning failures into exit codes."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TextIO

from .. import __version__
from ..errors import PyModelsError
from ..registry import DEFAULT_URL
from . import commands
from .commands import Failure, exit_code

__all__ = ["EXIT_DATA", "EXIT_INTERRUPTED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_NOT_FOUND = commands.NOT_FOUND
EXIT_USAGE = commands.USAGE
EXIT_DATA = commands.DATA
EXIT_INTERRUPTED = 130
#: A closed pipe (`pymodels export | head`): what a shell reports for SIGPIPE.
EXIT_PIPE = 141

DESCRIPTION = """\
Look into storages and move records between them, from a terminal.

Storages are named by URL (sqlite:///app.db, shelve:///data.shelf,
tokyo-cabinet:///storage.tct, postgresql://user@host/db?table=people, ...);
without one, the embedded default {default}. Reading commands (info, find,
get, export, and the source of copy) open storages read-only and never create
a database. Records travel as tagged JSON, one object per record with its pk
under "$pk" (dates, datetimes, Decimal and bytes as {{"$date": ...}},
{{"$datetime": ...}}, {{"$decimal": ...}}, {{"$bytes": <base64>}}).
"""

EPILOG = """\
exit codes: 0 ok, 1 not found, 2 usage or configuration, 3 backend or data
error, 130 interrupted; a closed pipe ends quietly (141).

examples:
  pymodels info sqlite:///app.db
  pymodels find sqlite:///app.db --where last_name__startswith=Sm --order-by -birth_date
  pymodels export sqlite:///app.db people.jsonl
  pymodels import shelve:///copy.shelf people.jsonl more.csv
  pymodels copy sqlite:///app.db tokyo-cabinet:///app.tct

'pymodels COMMAND --help' describes one command.
"""

VALUES_HELP = """\
values (--where, --where-not, and CSV cells on import):
  42, -7, 1.5, 2e3   numbers (int without a fraction, float with one)
  true, false        booleans
  null               no value (the library refuses it in a condition: use
                     path__exists=false to match records without the field)
  2024-05-01         a date
  2024-05-01T12:30   a naive datetime; ...Z or ...+02:00 an aware one
  [1, 2], {...}      tagged JSON: lists, {"$decimal": "2.50"}, ...
  "2024", 'true'     quoted: always the text between the quotes
  anything else      text (Smith, FI, a b)
"""

WHERE_HELP = """\
conditions are the library's lookups, path__op=value: no op means equals;
ops: equals exists gt gte lt lte between in contains contains_all
contains_any startswith endswith iequals icontains istartswith iendswith
matches imatches year month day like. Paths go into nested fields with __
(address__city=Oulu). Every --where must hold; --where-not negates one
condition (country=FI there is Django's country__ne / MongoDB's $ne).

"""

#: Options that take a value: `--order-by -year` is read as `--order-by=-year`.
VALUE_OPTIONS = frozenset(
    {
        "--where",
        "--where-not",
        "--order-by",
        "--limit",
        "--format",
        "--pk",
        "--batch-size",
        "--sample",
    }
)

Handler = Callable[[argparse.Namespace, TextIO, TextIO], int]


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    fmt = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(
        prog="pymodels",
        description=DESCRIPTION.format(default=DEFAULT_URL),
        epilog=EPILOG,
        formatter_class=fmt,
    )
    top.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    top.add_argument("--version", action="version", version=f"pymodels {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    parsers: dict[str, argparse.ArgumentParser] = {}

    def command(
        name: str, handler: Handler, summary: str, usage: str, epilog: str = ""
    ) -> argparse.ArgumentParser:
        sub.add_parser(name, help=summary)
        p = argparse.ArgumentParser(
            prog=f"pymodels {name}",
            usage=f"pymodels {name} {usage}",
            description=summary[0].upper() + summary[1:] + ".",
            epilog=epilog or None,
            formatter_class=fmt,
        )
        p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
        p.set_defaults(fn=handler, command=name)
        parsers[name] = p
        return p

    url_help = f"storage URL (default {DEFAULT_URL})"

    p = command(
        "info",
        commands.info,
        "backend, record count, file size, indexes and the fields records hold",
        "[URL] [--sample N]",
    )
    p.add_argument("url", nargs="?", help=url_help)
    p.add_argument(
        "--sample",
        type=int,
        default=1000,
        metavar="N",
        help="look at the fields of at most N records, picked at random (default 1000)",
    )

    p = command(
        "find",
        commands.find,
        "print the records that match conditions",
        "[URL] [--where PATH__OP=VALUE ...] [--where-not ...] [--order-by [-]PATH ...] "
        "[--limit N] [--format table|jsonl|json]",
        epilog=WHERE_HELP + VALUES_HELP,
    )
    p.add_argument("url", nargs="?", help=url_help)
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="PATH__OP=VALUE",
        help="a condition every record printed meets (repeatable)",
    )
    p.add_argument(
        "--where-not",
        action="append",
        default=[],
        metavar="PATH__OP=VALUE",
        help="a condition no record printed meets (repeatable)",
    )
    p.add_argument(
        "--order-by",
        action="append",
        default=[],
        metavar="[-]PATH",
        help="sort by this path, descending with '-' (repeatable; then by pk)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="print at most N records")
    p.add_argument(
        "--format",
        choices=("table", "jsonl", "json"),
        help="table on a terminal, else JSON Lines (default); json: one array",
    )

    p = command("get", commands.get, "print one record by pk", "[URL] PK")
    p.add_argument("url", nargs="?", help=url_help)
    p.add_argument("pk")

    p = command(
        "put",
        commands.put,
        "save one record given as a tagged JSON object (- reads it from standard input)",
        "[URL] JSON [--pk PK]",
    )
    p.add_argument("url", nargs="?", help=url_help)
    p.add_argument(
        "json",
        help='the record, e.g. \'{"name": "Ann", "born": {"$date": '
        '"1990-05-01"}}\'; its "$pk" (or --pk) names the pk',
    )
    p.add_argument("--pk", help="the pk to save under (default: the record's $pk, else a new one)")

    p = command("delete", commands.delete, "delete records by pk", "[URL] PK [PK ...]")
    p.add_argument("args", nargs="+", metavar="[URL] PK", help=url_help + "; then the pks")

    p = command(
        "export",
        commands.export,
        "write every record to a file or standard output",
        "[URL] [FILE] [--format jsonl|json]",
        epilog="FILE '-' or none is standard output. The file is written beside its\n"
        "name and renamed into place when complete.\n",
    )
    p.add_argument("args", nargs="*", metavar="[URL] [FILE]", help=url_help + "; then the file")
    p.add_argument(
        "--format",
        choices=("jsonl", "json"),
        help="JSON Lines (default), or a JSON array (default for *.json)",
    )

    p = command(
        "import",
        commands.import_,
        "save the records of files (JSON Lines, a JSON array or CSV) into a storage",
        "[URL] [FILE ...] [--format jsonl|json|csv] [--continue-on-error] [--batch-size N]",
        epilog=IMPORT_HELP + "\n" + VALUES_HELP,
    )
    p.add_argument(
        "args",
        nargs="*",
        metavar="[URL] [FILE ...]",
        help=url_help + "; then the files ('-' or none: standard input)",
    )
    p.add_argument(
        "--format",
        choices=("jsonl", "json", "csv"),
        help="the files' format (default: from the extension, else the content)",
    )
    p.add_argument(
        "--continue-on-error",
        action="store_true",
        help="write the good records batch by batch and report the bad ones",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        metavar="N",
        help="records per transaction (default 1000)",
    )

    p = command(
        "copy",
        commands.copy,
        "copy every record (and the indexes) from one storage into another",
        "SRC DST [--no-verify] [--batch-size N]",
        epilog="Records keep their pks: copying again replaces them (a copy is idempotent).\n"
        "Afterwards both sides are read back and compared: the number of records\n"
        "and a content hash that does not depend on order.\n",
    )
    p.add_argument("src", help="the storage to read (opened read-only)")
    p.add_argument("dst", help="the storage to write (created if missing)")
    p.add_argument("--no-verify", action="store_true", help="skip comparing both sides afterwards")
    p.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        metavar="N",
        help="records per transaction (default 1000)",
    )
    return top, parsers


IMPORT_HELP = """\
Every record is checked before anything is written: one bad record writes
nothing, and every bad record is reported as FILE:LINE: what is wrong. With
--continue-on-error the good records are written batch by batch and the bad
ones reported. Either way a batch that fails to write leaves none of its
records behind, and the last line says how many records were written and how
many refused. Records keep the pk under "$pk" (a "$pk" column in CSV); those
without one get a new pk.

Formats: JSON Lines (one object per line), a JSON array of objects, or CSV
with a header row naming the fields (address__city is a nested field; empty
cells are absent fields). CSV cells are read as --where values are.
"""


def _join_values(argv: Sequence[str]) -> list[str]:
    """``--order-by -year`` as ``--order-by=-year``: a value may start with '-'."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            out.extend(argv[i:])
            break
        if token in VALUE_OPTIONS and i + 1 < len(argv):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args_list = _join_values(list(sys.argv[1:] if argv is None else argv))
    top, parsers = _parsers()
    debug = "--debug" in args_list
    command = next((a for a in args_list if not a.startswith("-")), None)
    if command is None or command not in parsers:
        if command is None and any(a in ("-h", "--help") for a in args_list):
            top.print_help()
            return EXIT_OK
        top.parse_args(args_list)  # prints usage and exits 2 on an unknown command
        top.print_usage(sys.stderr)
        return EXIT_USAGE
    rest = list(args_list)
    rest.remove(command)
    args = parsers[command].parse_intermixed_args(rest)
    try:
        status: int = args.fn(args, sys.stdout, sys.stderr)
        sys.stdout.flush()
        return status
    except Failure as e:
        return _report(str(e), e.code, debug)
    except PyModelsError as e:
        return _report(f"{type(e).__name__}: {e}", exit_code(e), debug)
    except KeyboardInterrupt:
        return _report("interrupted", EXIT_INTERRUPTED, debug)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly. Point stdout at
        # /dev/null so the interpreter's own flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
    except Exception as e:
        if debug:
            raise
        return _report(
            f"unexpected {type(e).__name__}: {e} (run again with --debug for the traceback)",
            EXIT_DATA,
            False,
        )


def _report(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    try:
        sys.stderr.write(f"pymodels: {message}\n")
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    return code

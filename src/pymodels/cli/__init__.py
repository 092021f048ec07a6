"""The ``pymodels`` command line: look into storages and move records between them.

    pymodels info [URL]
    pymodels find [URL] --where age__gte=30 --order-by -age --limit 10
    pymodels get [URL] PK
    pymodels put [URL] '{"name": "Ann"}' --pk ann
    pymodels delete [URL] PK [PK ...]
    pymodels export [URL] [FILE]
    pymodels import [URL] [FILE ...]
    pymodels copy SRC DST

``pymodels --help`` and ``pymodels COMMAND --help`` say more; ``docs/cli.md``
is the full page. Tables and progress bars use ``rich`` (the ``cli`` extra).
"""

from .app import main

__all__ = ["main"]

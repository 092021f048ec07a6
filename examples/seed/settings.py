"""One settings dict per backend; ``DATABASE`` is the only line to change.

Run ``python settings.py --list`` to see the names.
"""

from __future__ import annotations

import os
import sys

# direct access to the database file (simple, not scalable)
TOKYO_CABINET_DATABASE = {
    "backend": "pymodels.ext.tokyo_cabinet",
    "kind": "TABLE",
    "path": "storage.tct",
}

# access through the Tyrant manager (needs `ttserver storage.tct`, scalable)
TOKYO_TYRANT_DATABASE = {
    "backend": "pymodels.ext.tokyo_tyrant",
    "host": os.environ.get("PYMODELS_TYRANT_HOST", "localhost"),
    "port": int(os.environ.get("PYMODELS_TYRANT_PORT", "1978")),
}

# the embedded default: one SQLite file
SQLITE_DATABASE = {
    "backend": "pymodels.ext.sqlite",
    "path": "pymodels.db",
}

# a production SQL server
POSTGRESQL_DATABASE = {
    "backend": "pymodels.ext.postgresql",
    "url": os.environ.get("PYMODELS_POSTGRESQL_URL", "postgresql://localhost:5432/pymodels"),
}

# MongoDB, the road past one machine
MONGODB_DATABASE = {
    "backend": "pymodels.ext.mongodb",
    "url": os.environ.get("PYMODELS_MONGODB_URL", "mongodb://localhost:27017/pymodels"),
}

# the standard library only
SHELVE_DATABASE = {
    "backend": "pymodels.ext.shelve",
    "path": "storage.shelve",
}

# nothing persists: handy in tests
MEMORY_DATABASE = {
    "backend": "pymodels.ext.memory",
}

# this is the *only* line you need to change in order to change the backend
DATABASE = SQLITE_DATABASE

if __name__ == "__main__" and sys.argv[1:] == ["--list"]:
    print("\n".join(name for name in dir() if name.endswith("_DATABASE")))

"""MongoDB backend: the road past one machine.

Engine: MongoDB 4.2+ (or a server speaking its wire protocol; tested with
SecantusDB 0.7, which reports 8.2) through pymongo. Dependencies: the
``mongodb`` extra (``pip install 'pymodels[mongodb]'``).
Suits: data that outgrows one server: the same settings point at a replica
set or at a sharded cluster's ``mongos`` (``docs/mongodb.md``).
Layout: one collection per storage (setting ``collection``, default
``documents``), one document per record with the pk as ``_id``; values are
native BSON where BSON keeps and compares them as the contract does, tagged
sub-documents otherwise (:mod:`._encoding`). The library's own data lives in
the collection ``pymodels_meta``. Generated pks are ``str(ObjectId())``;
records other programs wrote with ObjectId ``_id``\\ s are read and written
keeping their ``_id``.
Queries: one filter document, exact where MongoDB's semantics are the
contract's and re-checked in Python where they differ (``features.ops``);
sorts run in the engine unless the records mix kinds at a sort key.
Transactions need a replica set or mongos (``features.transactions`` is
decided from the server's ``hello``).
Limits: ``ConnectionFailed`` leaves the last write's outcome unknown (no write
is retried). A unique index compares list elements as MongoDB does
(multikey), and a Decimal and a number of equal value clash in it.
"""

from ._query import Query
from ._storage import Settings, Storage, features

__all__ = ["Query", "Settings", "Storage", "features"]

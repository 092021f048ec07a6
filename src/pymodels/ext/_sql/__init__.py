"""What the SQL backends share: value encoding, the condition compiler, the query class.

* :mod:`.encoding`: records as tagged JSON whose SQL form compares and sorts
  in the contract's order.
* :mod:`.compiler`: condition trees to SQL with bound parameters; the boolean
  structure and exactness bookkeeping, shared by every dialect.
* :mod:`.sqlite_dialect`, :mod:`.postgresql_dialect`: each engine's SQL.
* :mod:`.query`: running compiled queries.
* :mod:`.order_repair`: where SQL's order is not the contract's (a list or dict
  at an order key), and the Python sort that repairs it there only.
* :mod:`.storage`: the storage base class with the statements every dialect
  spells the same (counting, deleting, clearing, creating indexes).
"""

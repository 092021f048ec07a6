"""What the Tokyo Cabinet and Tokyo Tyrant backends share: one ``.tct`` format.

* :mod:`._format`: Tokyo Cabinet's table constants (condition ops, orders, index types)
  and its dump format;
* :mod:`._columns`: how a pymodels record becomes table columns and back;
* :mod:`._compiler`: conditions compiled to Tokyo table queries;
* :mod:`._query`: the query class both backends use, over the hooks of
  :class:`._engine.TokyoStorage`.

A file written through one backend therefore reads identically through the other, and
through Tokyo's own tools (``tctmgr``, ``tcrmgr``).
"""

"""Testing tools shipped with pymodels.

* :mod:`pymodels.testing.suite`: the conformance suite; subclass
  :class:`StorageTests` and provide ``storage_factory`` to run it on a backend.
* :mod:`pymodels.testing.oracle`: the suite's naive reference evaluator.
* :mod:`pymodels.testing.strategies`: hypothesis strategies over the value
  domain and the query language.
* :mod:`pymodels.testing.postgresql`: a throwaway PostgreSQL server.

The suite needs ``pytest`` and ``hypothesis`` (``pip install 'pymodels[test]'``);
importing this package alone does not.
"""

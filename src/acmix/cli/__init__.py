"""The ``acmix`` command line (``acmix train``, ``acmix eval``, ...)."""

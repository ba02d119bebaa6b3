"""The GPU speed targets against the op and model benchmarks' JSON (see ``acmix.analysis.targets``): prints a
table, writes JSON.  Measures nothing itself."""

from acmix.analysis.targets import main

if __name__ == "__main__":
    raise SystemExit(main())

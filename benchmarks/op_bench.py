"""ACmix operator benchmark (see ``acmix.analysis.op_bench``): prints a table, writes JSON."""

from acmix.analysis.op_bench import main

if __name__ == "__main__":
    main()

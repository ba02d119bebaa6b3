"""ACmix model benchmark (see ``acmix.analysis.model_bench``): prints a Markdown table, writes JSON."""

from acmix.analysis.model_bench import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Registers, spills and shared memory of the Triton attention kernels (see ``acmix.analysis.kernel_resources``):
prints a table, writes JSON.  No GPU needed."""

from acmix.analysis.kernel_resources import main

if __name__ == "__main__":
    main()

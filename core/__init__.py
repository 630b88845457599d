"""What every part of twin shares: the error base, atomic owner-only writes, and the programs' command line."""

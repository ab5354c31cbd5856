"""The lowest layer: configuration, run layout, typed records, errors, atomic files, locks, path and secret
handling. Imports nothing from lmforge above it."""

"""The `dvsgkit` command line: one thin click module per command."""

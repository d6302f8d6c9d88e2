"""The deploy rehearsal: `make deploy`'s exact path against a local moto server (see cli.py)."""

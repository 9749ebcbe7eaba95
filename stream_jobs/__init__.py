"""The Faust stream wiring: the app, its topics and its agents. Everything else is in ``monitor``."""

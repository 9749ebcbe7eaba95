"""The analyst's web console: alerts and the posts behind them, signals, model health, and reviews that
train the next model. Server-rendered (FastAPI + Jinja2), reading the monitor's own database."""

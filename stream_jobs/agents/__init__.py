"""One module per worker role; each agent reads like one sentence of the data flow."""

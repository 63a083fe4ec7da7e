"""One module per `madapt` command; each exposes ``register(app)``."""

"""gunicorn's entry point: `gunicorn -c serving/gunicorn_conf.py serving.wsgi:app`.

Imported in each worker after the fork (the config does not preload), so each builds its own
clients, watches and loaded models."""

from __future__ import annotations

import logging

from serving.app import create_app

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")

app = create_app()

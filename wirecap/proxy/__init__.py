"""The recording reverse proxy (trio + h11). Imports wirecap.capture only.

``app.py`` assembles a running proxy (:func:`~wirecap.proxy.app.run_proxy`), ``server.py`` holds
the listener, ``relay.py`` relays one exchange; ``config.py``, ``routing.py``, ``messages.py`` and
``exchange.py`` are sans-IO.
"""

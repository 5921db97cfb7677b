"""The web inspector (``wirecap ui``): a page that lists, filters and opens the exchanges of a
capture, live while a proxy writes it, served by a small trio + h11 server.

``app.py`` runs it; ``inspector.py`` follows the capture and keeps the table (``table.py``) and
the search text (``search.py``); ``summary.py``, ``detail.py``, ``conversation.py`` and
``commands.py`` turn an analysed exchange into what the page shows (sans-IO); ``api.py`` answers
the URLs over ``http.py``; ``metrics.py`` holds the Prometheus series; ``static/`` is the page.
"""

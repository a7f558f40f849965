"""Live queries over Ray Serve: the registry's encoders and the stored galleries behind one HTTP API.

``app.build_app`` is the application (import path ``reidray.serve.app:build_app``, args
``settings.ServeSettings``); ``serve_config.yaml`` runs it with ``serve run`` / ``serve deploy``;
``cli.serve_command`` is ``python -m reidray.run serve``. Endpoints and statuses: ``app``'s docstring.
"""

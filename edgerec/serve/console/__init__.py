"""The console: a web page at `/` of `edgerec serve` to look at what the service does (issue 23).

Four views, plain HTML, CSS and JavaScript in `static/` (no CDN, no build step):
  Feed      pick a user and a request time; stage 1's candidates by channel, stage 2's ranking, and
            per item its score parts, its intensity over the next 48 h and the user's examination
            curve (edgerec/serve/console/explain.py). Clicking an item posts the real /feedback and
            waits until the stream has folded it into the store (the lag is shown).
  Device    the EI-BERT edge model (`edgerec serve --edge-pack`) re-ranks the list for a typed
            query, cloud and edge order side by side, and what the phone would upload.
  Runs      the results ledger as a sortable table; a run's `edgerec explain` plots.
The page talks to the JSON endpoints below, all under /console/ and left out of the OpenAPI schema
(the service's published API stays /recommend, /feedback and /health). Bodies are validated like
the service's own (strict types, bounded ids; 422 naming the field), and a failure of the model or
store answers 503 with one line, never 500.
"""

from __future__ import annotations

from edgerec.serve.console.routes import ConsoleOptions, mount_console

__all__ = ["ConsoleOptions", "mount_console"]

"""The service and its stream in one process, for `make demo` and the console tests.

In production these are two commands: `edgerec serve --feedback-to FILE` appends /feedback events
to FILE and `edgerec stream --events FILE --follow` folds them into the store. `LiveService` runs the
same two parts as threads of one process: uvicorn on a free 127.0.0.1 port, and `run_stream` over a
FileEventSource that follows the feedback file (like `tail -f`) into its own connection to the
same SQLite store. Nothing is simulated: a click on the console goes through the real /feedback,
the real event file and the real stream before the store's history shows it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edgerec.errors import EdgerecError


class LiveService:
    """`with LiveService(service, store_path, feedback_path) as live: live.url` (see the module doc)."""

    def __init__(self, service, store_path: str | Path, feedback_path: str | Path, console=None,
                 host: str = "127.0.0.1", port: int | None = None):
        from edgerec.serve.ports import free_port

        self.service, self.store_path, self.feedback_path = service, Path(store_path), Path(feedback_path)
        self.console, self.host, self.port = console, host, port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.stream_error: BaseException | None = None

    def __enter__(self) -> "LiveService":
        import uvicorn

        from edgerec.features.store import SQLiteStore
        from edgerec.serve.app import create_app
        from edgerec.serve.stream import FileEventSource, run_stream

        app = create_app(self.service, console=self.console)
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level="error"))
        self._serve = threading.Thread(target=self.server.run, name="edgerec-serve", daemon=True)
        self._serve.start()
        self.source = FileEventSource(self.feedback_path, follow=True, poll_interval=0.05)
        definition = self.service.ranker.definition

        def follow() -> None:
            store = SQLiteStore(self.store_path)  # its own connection, as `edgerec stream` would have
            try:
                run_stream(self.source, store, definition, batch_size=100)
            except BaseException as e:  # noqa: BLE001 - kept, and raised by stop()
                self.stream_error = e
            finally:
                store.close()

        self._stream = threading.Thread(target=follow, name="edgerec-stream", daemon=True)
        self._stream.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop(check=False)  # nothing left behind: no listener, no follower, no open store
            raise
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        t0 = time.monotonic()
        while not self.server.started:
            if not self._serve.is_alive() or time.monotonic() - t0 > timeout:
                raise EdgerecError(f"the service did not start on {self.url}")
            time.sleep(0.05)

    def wait(self) -> None:
        """Serve until Ctrl-C."""
        try:
            while self._serve.is_alive():
                self._serve.join(0.5)
        except KeyboardInterrupt:
            pass

    def stop(self, check: bool = True) -> None:
        """Stop both threads; `check`: raise what ended the stream early, if anything did."""
        self.server.should_exit = True
        self.source.stop_following.set()
        self._serve.join(10)
        self._stream.join(10)
        if check and self.stream_error is not None:
            raise EdgerecError(f"the stream following {self.feedback_path} stopped: "
                               f"{type(self.stream_error).__name__}: {self.stream_error}") from self.stream_error

    def __exit__(self, *exc) -> None:
        self.stop(check=exc[0] is None)

"""A network camera for tests, run as its own process: MJPEG over HTTP on 127.0.0.1:PORT,
a fixed scene with sensor noise. `python tests/mjpeg_camera.py PORT [FPS]`; prints "ready"."""
from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np


def frames(fps: float):
    rng = np.random.default_rng(0)
    base = np.tile(np.linspace(40, 200, 160, dtype=np.float32), (120, 1))[..., None].repeat(3, 2)
    while True:
        img = np.clip(base + rng.normal(0, 2.0, base.shape), 0, 255).astype(np.uint8)
        yield cv2.imencode(".jpg", img)[1].tobytes()
        time.sleep(1.0 / fps)


def main() -> None:
    port, fps = int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 10.0

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            try:
                for jpg in frames(fps):
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                     b"Content-Length: %d\r\n\r\n%s\r\n" % (len(jpg), jpg))
            except OSError:  # the reader went away
                pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

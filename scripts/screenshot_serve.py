#!/usr/bin/env python3
"""Screenshot of the live results page (`runner serve`) for the docs, through chromedriver.

Usage:
    runner serve results --port 8080 &
    python3 scripts/screenshot_serve.py http://127.0.0.1:8080/#sweep=lora_rank_sweep docs/images/serve.png

Needs Debian's chromium and chromium-driver; standard library only. Waits until the page has
drawn its trial table and curves, then saves a full-page PNG.
"""

import base64
import json
import socket
import subprocess
import sys
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["value"]


def main(url, out, width=1400, height=1900):
    port = free_port()
    driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                call(base, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={width},{height}"]}}}}
        session = call(base, "POST", "/session", caps)["sessionId"]
        s = f"/session/{session}"
        call(base, "POST", s + "/url", {"url": url})
        for _ in range(100):
            ready = call(base, "POST", s + "/execute/sync", {"script":
                "return window.runnerPage && window.runnerPage.updates > 0 && "
                "document.querySelectorAll('#curves path.curve').length > 0", "args": []})
            if ready:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        png = base64.b64decode(call(base, "GET", s + "/screenshot"))
        with open(out, "wb") as f:
            f.write(png)
        call(base, "DELETE", s)
        print(f"wrote {out}")
    finally:
        driver.kill()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

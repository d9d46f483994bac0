#!/usr/bin/env python3
"""Drives the admin console in headless Chromium, as an operator would: opens it, logs in
with the token when it asks for one (typing into the form), and clicks a backend's drain
button with the mouse. Used by tests/console.rs; standard library only.

Chromium is controlled over the DevTools protocol on a pipe (--remote-debugging-pipe): it
reads commands from fd 3 and writes answers and events to fd 4, each a JSON message ended by
a NUL byte. Every wait is bounded by --timeout; Chromium is closed, then killed by its PID.

Prints one JSON object on success: the console's status message after the click and the
backend row's class. Exits non-zero, saying why on stderr, on any failure. DRIVE_DEBUG=1 in
the environment shows Chromium's own log.
"""

import argparse
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--remote-debugging-pipe",
]

# Runs in the child: fds 3 and 4 from the two given, then exec (argv[3:]).
TRAMPOLINE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
    "os.close(int(sys.argv[1])); os.close(int(sys.argv[2])); os.execvp(sys.argv[3], sys.argv[3:])"
)


class Failure(Exception):
    pass


class Browser:
    """One Chromium and one page in it, attached with a flat CDP session."""

    def __init__(self, chromium, deadline):
        self.deadline = deadline
        self.profile = tempfile.mkdtemp(prefix="imapproxy-console-")
        to_chromium = os.pipe()
        from_chromium = os.pipe()
        # Above 9, so that moving them to 3 and 4 cannot overwrite one with the other.
        theirs_in = fcntl.fcntl(to_chromium[0], fcntl.F_DUPFD, 10)
        theirs_out = fcntl.fcntl(from_chromium[1], fcntl.F_DUPFD, 10)
        for fd in (to_chromium[0], from_chromium[1]):
            os.close(fd)
        self.out, self.inp = to_chromium[1], from_chromium[0]
        # A trampoline puts the pipe ends on fds 3 and 4, then becomes Chromium (same PID).
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TRAMPOLINE, str(theirs_in), str(theirs_out),
             chromium, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            pass_fds=(theirs_in, theirs_out),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None if os.environ.get("DRIVE_DEBUG") else subprocess.DEVNULL,
        )
        os.close(theirs_in)
        os.close(theirs_out)
        self.buffer = b""
        self.next_id = 0
        self.session = None

    def open_page(self):
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )["sessionId"]

    def left(self):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Failure("timed out")
        return remaining

    def call(self, method, params=None):
        """Sends one command and returns its result; events in between are dropped."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise Failure(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def receive(self):
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.inp], [], [], self.left())
            if not ready:
                raise Failure("timed out waiting for Chromium")
            chunk = os.read(self.inp, 65536)
            if not chunk:
                raise Failure("Chromium closed the pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def evaluate(self, expression):
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}
        )
        if "exceptionDetails" in result:
            return None
        return result["result"].get("value")

    def wait_for(self, expression, what):
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() + 0.1 > self.deadline:
                raise Failure(f"timed out waiting for {what}")
            time.sleep(0.1)

    def click(self, selector):
        """A real left click at the middle of the element, as a mouse would."""
        box = self.wait_for(
            f"""(() => {{
                const e = document.querySelector({json.dumps(selector)});
                if (!e) return null;
                e.scrollIntoView({{block: 'center'}});
                const r = e.getBoundingClientRect();
                return {{x: r.x + r.width / 2, y: r.y + r.height / 2}};
            }})()""",
            selector,
        )
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", **box})
        for kind in ("mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "button": "left", "clickCount": 1, **box},
            )

    def close(self):
        try:
            self.session = None
            self.deadline = time.monotonic() + 2
            self.call("Browser.close")
        except (Failure, OSError):
            pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=3)
        for fd in (self.out, self.inp):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


def drain(browser, url, token, backend):
    browser.call("Page.navigate", {"url": url})
    page = browser.wait_for(
        "document.readyState === 'complete' && "
        "(document.querySelector('#login') ? 'login' : document.querySelector('#backends') && 'console')",
        "the console or its login form",
    )
    if page == "login":
        if token is None:
            raise Failure("the console asked for a login, and no token was given")
        browser.click("#token")
        browser.call("Input.insertText", {"text": token})
        browser.click("#login-button")
        browser.wait_for(
            "document.readyState === 'complete' && !!document.querySelector('#backends')",
            "the console after logging in",
        )
    button = f'button[data-action="drain"][data-backend="{backend}"]:not([disabled])'
    browser.click(button)
    message = browser.wait_for(
        f"""(() => {{
            const m = document.querySelector('#message').textContent;
            return m.includes({json.dumps(backend)}) || m.includes('failed') ? m : null;
        }})()""",
        "the console's answer to the click",
    )
    # The message comes first; the table is redrawn once the page has fetched /backends
    # again: wait for the row to leave the state it was in before the click.
    row = browser.wait_for(
        f"""(() => {{
            for (const tr of document.querySelectorAll('#backends tbody tr'))
                if (tr.cells[0].textContent === {json.dumps(backend)} && tr.className !== 'up')
                    return tr.className;
            return null;
        }})()""",
        "the backend's row to change",
    )
    return {"message": message, "row": row, "logged_in": page == "login"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chromium", default="chromium")
    parser.add_argument("--url", required=True)
    parser.add_argument("--token")
    parser.add_argument("--drain", required=True, metavar="BACKEND")
    parser.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args()
    browser = Browser(args.chromium, time.monotonic() + args.timeout)
    try:
        browser.open_page()
        print(json.dumps(drain(browser, args.url, args.token, args.drain)))
    except Failure as e:
        print(f"drive.py: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        browser.close()


if __name__ == "__main__":
    main()

"""Make docs/dashboard.png: four daemons on loopback under a mixed load for about a minute and a
half, the dashboard in headless chromium (as integration/test_dashboard.py drives it), a composite
selected, and a screenshot.

    python -m integration.dashboard_screenshot docs/dashboard.png

Needs what the browser test needs (node, chromium, integration/web/node_modules; .ci/run installs them).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from integration.test_dashboard import Browser, _missing
from xchanged.localcluster import LocalCluster, free_port

LOAD_SECONDS = 90


def main(out: Path) -> None:
    if _missing():
        sys.exit(f"cannot take the screenshot: {_missing()}")
    base = Path(tempfile.mkdtemp(prefix="xchanged-shot-"))
    ports = [free_port() for _ in range(4)]
    cluster = LocalCluster([4, 4, 2, 2], base_dir=base / "cluster",
                           labels=[{"zone": "lab-1", "cuda": "12"}, {"zone": "lab-1"}, {"zone": "lab-2"},
                                   {"zone": "lab-2", "ssd": "yes"}],
                           node_settings={i: {"http": {"listen": f"127.0.0.1:{p}"}} for i, p in enumerate(ports)})
    with cluster:
        browser = Browser(f"http://127.0.0.1:{ports[0]}/", base / "profile", base / "driver.log")
        try:
            browser.read(120)
            end = time.monotonic() + LOAD_SECONDS
            composite = ""
            wave = 0
            with cluster.client(0) as c0, cluster.client(1) as c1:
                while time.monotonic() < end:
                    wave += 1
                    c0.submit_many([["sh", "-c", f"sleep {2 + (wave + i) % 7}"] for i in range(6 + wave % 5)],
                                   name=f"render-{wave}")
                    c1.submit_many([["sh", "-c", f"sleep {1 + i % 4}"] for i in range(4)], name=f"etl-{wave}")
                    if wave % 4 == 1:
                        composite = c0.submit_spec({"name": f"frames-{wave}", "range": [0, 24], "chunk": 2,
                                                    "command": ["sh", "-c", "sleep 3; echo {items}"],
                                                    "reduce": ["sh", "-c", "wc -l < $XCHANGED_PARTS"]})
                    if wave % 6 == 0:
                        c0.submit(["sh", "-c", "sleep 1; exit 2"], retries=1, name="flaky-check")
                    time.sleep(6)
            browser.ask({"detail": composite}, 60)
            browser.ask({"screenshot": str(out.absolute())}, 60)
        finally:
            browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png"))

"""A screenshot of the ``didi serve`` page (docs/serve.png): the given models are served in this process (uvicorn on
a free local port), the page is opened in Debian's headless chromium through selenium and chromium-driver
(``apt-get install chromium chromium-driver``), Generate is pressed with the given seed and conditioning, and the page
is saved once every model's panel is done (its samples, steps, network calls and time).

    python benchmarks/serve_screenshot.py --model runs/quickstart-bytes/student \\
        --model runs/quickstart-bytes/teacher --prompt "ROMEO:" --seed 0 --out docs/serve.png
"""
from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from didi.serve.api import served_models
from didi.serve.app import create_app

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="a model to serve (repeatable)")
    parser.add_argument("--nfe", type=int, action="append", default=None, help="steps of each --model")
    parser.add_argument("--prompt", default=None, help="continue this text (default: unconditional)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=2)
    parser.add_argument("--size", default="1400,820", help="window width,height in pixels")
    parser.add_argument("--out", default="docs/serve.png")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(served_models(args.model, args.nfe)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in FLAGS + [f"--window-size={args.size}", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        if args.prompt is not None:
            Select(driver.find_element(By.ID, "mode")).select_by_value("prompt")
            driver.find_element(By.ID, "text").send_keys(args.prompt)
        for name, value in (("seed", args.seed), ("num_samples", args.num_samples)):
            box = driver.find_element(By.ID, name)
            box.clear()
            box.send_keys(str(value))
        driver.find_element(By.ID, "generate").click()
        panels = driver.find_elements(By.CSS_SELECTOR, ".panel")
        WebDriverWait(driver, 600).until(lambda d: all(p.get_attribute("data-state") in ("done", "error")
                                                       for p in panels))
        driver.save_screenshot(args.out)
        for panel in panels:
            print(panel.get_attribute("data-model"), "|", panel.find_element(By.CSS_SELECTOR, ".status").text)
        print(f"screenshot: {args.out}")
    finally:
        driver.quit()
        server.should_exit = True


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The web view in a real browser: Debian's chromium, driven by selenium.

    web_test.py BASE_URL KNOWN_CONTAINER IMAGE SCREENSHOT [BIG_URL BIG_COUNT]

Opens BASE_URL/ (nginx of the compose stack in make e2e), waits for the
row of KNOWN_CONTAINER, starts another container from IMAGE and sees its
row appear without a reload, removes it and sees the row go, searches by
the known container's IP and sees one row, and saves a screenshot. With
BIG_URL, a node holding BIG_COUNT containers: the page lists them all
while only the visible rows are in the document, and a search finds one.
"""

import shutil
import subprocess
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

ME = "web-test"


def say(*parts):
    print(f"{ME}:", *parts, file=sys.stderr, flush=True)


def docker(*args):
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def main():
    base, known, image, screenshot = sys.argv[1:5]
    big = sys.argv[5:7]
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    binary = shutil.which("chromium")
    if binary:
        options.binary_location = binary
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    extra = f"{ME}-{int(time.time())}"
    passed = 0
    try:
        wait = WebDriverWait(driver, 20, poll_frequency=0.1)

        # Read in one script: the page redraws its rows at any time, so an
        # element found a moment ago may be gone.
        def shown():
            return driver.execute_script(
                "return [...document.querySelectorAll('#rows .row')]"
                ".map(r => [r.dataset.name, r.className])")

        def rows_named(name):
            return [cls for n, cls in shown() if n == name]

        driver.get(f"{base}/")
        wait.until(lambda d: d.find_element(By.ID, "status").text == "live")
        wait.until(lambda d: rows_named(known))
        say(f"ok: the page is live and shows {known}")
        passed += 1

        # A marker that a reload would lose.
        driver.execute_script("window.__shoalWebTest = 1")
        started = time.monotonic()
        docker("run", "-d", "--name", extra, image, "sleep", "600")
        wait.until(lambda d: rows_named(extra))
        appeared = time.monotonic() - started
        assert driver.execute_script("return window.__shoalWebTest") == 1, "the page reloaded"
        say(f"ok: {extra} appeared {appeared:.2f} s after docker run, without a reload")
        passed += 1

        started = time.monotonic()
        docker("rm", "-f", extra)
        wait.until(lambda d: any("removed" in cls for cls in rows_named(extra)))
        marked = time.monotonic() - started
        wait.until(lambda d: not rows_named(extra))
        assert driver.execute_script("return window.__shoalWebTest") == 1, "the page reloaded"
        say(f"ok: {extra} marked removed {marked:.2f} s after docker rm, then its row went")
        passed += 1

        ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", known).split()[0]
        box = driver.find_element(By.ID, "search")
        box.clear()
        box.send_keys(ip)
        wait.until(lambda d: len(shown()) == 1)
        assert shown()[0][0] == known, shown()
        say(f"ok: searching {ip} shows one row, {known}")
        passed += 1

        # As a person would (clear() fires no input event).
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE)
        wait.until(lambda d: d.find_element(By.ID, "count").text != "1 shown")
        driver.execute_script("document.querySelector('#rows .row').click()")
        wait.until(lambda d: d.find_element(By.ID, "detail").is_displayed())
        assert '"id":' in driver.find_element(By.ID, "detail-body").text
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#nodes tbody tr"))
        driver.save_screenshot(screenshot)
        say(f"ok: a row's detail and the nodes panel show; screenshot {screenshot}")
        passed += 1

        if big:
            url, count = big[0], int(big[1])
            driver.get(f"{url}/")
            wait = WebDriverWait(driver, 60, poll_frequency=0.1)
            wait.until(lambda d: d.find_element(By.ID, "count").text == f"{count} shown")
            in_dom = len(shown())
            assert 0 < in_dom < 200, f"{in_dom} rows in the document for {count} containers"
            driver.execute_script("document.getElementById('viewport').scrollTop = 1e9")
            wait.until(lambda d: shown() and shown()[-1][0] != shown()[0][0])
            last = driver.execute_script(
                "const v = document.getElementById('viewport');"
                "return v.scrollTop + v.clientHeight >= v.scrollHeight - 2")
            assert last, "could not scroll to the end"
            box = driver.find_element(By.ID, "search")
            target = shown()[-1][0]
            box.send_keys(target)
            wait.until(lambda d: [n for n, _ in shown()] == [target])
            say(f"ok: {count} containers listed with {in_dom} rows in the document; scrolled to the end; a search finds {target}")
            passed += 1
    except Exception as e:
        driver.save_screenshot(screenshot)
        say(f"FAILED: {type(e).__name__}: {e} (screenshot {screenshot})")
        for entry in driver.get_log("browser")[-10:] if hasattr(driver, "get_log") else []:
            say(f"console: {entry}")
        print(f"web-test: {passed} passed, 1 failed")
        sys.exit(1)
    finally:
        subprocess.run(["docker", "rm", "-f", extra], capture_output=True)
        driver.quit()
    print(f"web-test: {passed} passed, 0 failed")


if __name__ == "__main__":
    main()

"""The catalog's web page in a real browser: headless Chromium (harness.browser).

Records shown a page at a time, sorting by a column, filtering by text and by
type, hostile values shown as text (never run, never markup), and a console free
of errors (no script, no blocked resource, no missing icon).
"""

from __future__ import annotations

import pytest

from harness import browser
from tests.test_catalog_helpers import fill, send_udp, wait_for_records

HOSTILE_OWNER = "<img src=x onerror=\"document.title='pwned'\">"
HOSTILE_PROJECT = "<script>document.title='pwned'</script>"


@pytest.fixture(scope="module")
def chromium():
    reason = browser.missing()
    if reason:
        pytest.skip(f"chromium not installed (make setup installs it): {', '.join(reason)}")
    with browser.headless_chromium() as driver:
        yield driver


@pytest.fixture
def listed(catalog):
    fill(catalog, 140, start=5000, project="bulk")
    send_udp(catalog.port, {"type": "hashtable", "project": "alpha", "owner": "ann", "port": 17})
    send_udp(catalog.port, {"type": "chirp", "project": HOSTILE_PROJECT, "owner": HOSTILE_OWNER,
                            "port": 3})  # fmt: skip
    wait_for_records(catalog, lambda rs: len(rs) == 142)
    return catalog


def cells(driver, column: int) -> list[str]:
    from selenium.webdriver.common.by import By

    return [
        td.text for td in driver.find_elements(By.CSS_SELECTOR, f"table tr td:nth-child({column})")
    ]


PORT, OWNER, TYPE = 5, 3, 1  # column numbers


def settled(driver, expected_url_part: str) -> None:
    """Wait until a click or submit has loaded its page.

    A form's submit returns before the new page has loaded, so reading the table
    at once may read the old page's table.
    """
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10).until(
        lambda d: (
            expected_url_part in d.current_url
            and d.execute_script("return document.readyState") == "complete"
        )
    )


def test_the_page_shows_sorts_filters_and_escapes(chromium, listed):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    driver = chromium
    browser.console_messages(driver)  # forget what came before
    driver.get(listed.url + "/")
    assert driver.title.startswith("catalog on ")
    summary = driver.find_element(By.TAG_NAME, "p").text
    assert "Services 1\u2013100 of 142" in summary, summary
    assert len(cells(driver, PORT)) == 100
    # The default order: type, project, name, port.
    assert cells(driver, TYPE)[:2] == ["chirp", "filler"]

    # Paging: the next page holds the rest.
    driver.find_element(By.LINK_TEXT, "next \u203a").click()
    settled(driver, "page=2")
    assert len(cells(driver, PORT)) == 42
    assert "page 2 of 2" in driver.page_source

    # Sorting: a click on a heading.
    driver.find_element(By.LINK_TEXT, "Port").click()
    settled(driver, "sort=port")
    ports = [int(text) for text in cells(driver, PORT)]
    assert ports[:3] == [3, 17, 5000] and ports == sorted(ports)

    # Filtering by text, through the form; the sort order stays.
    box = driver.find_element(By.NAME, "q")
    box.clear()
    box.send_keys("alpha")
    box.submit()
    settled(driver, "q=alpha")
    assert cells(driver, PORT) == ["17"]
    assert "sort=port" in driver.current_url

    # Filtering by type, through the summary's links.
    driver.get(listed.url + "/")
    driver.find_element(By.LINK_TEXT, "chirp").click()
    settled(driver, "chirp")
    assert cells(driver, TYPE) == ["chirp"]

    # Hostile values are text: shown as they are, never markup, never run.
    assert cells(driver, OWNER) == [HOSTILE_OWNER]
    assert HOSTILE_PROJECT in driver.find_element(By.TAG_NAME, "table").text
    assert not driver.find_elements(By.CSS_SELECTOR, "table img, table script")
    assert driver.title != "pwned"
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - the property raises when there is none

    # One record's page, from its name.
    driver.find_element(By.LINK_TEXT, "localhost").click()
    assert HOSTILE_OWNER in driver.find_element(By.TAG_NAME, "table").text
    assert browser.console_messages(driver) == []


def test_a_bad_page_number_is_a_page_saying_so(chromium, listed):
    from selenium.webdriver.common.by import By

    browser.console_messages(chromium)
    chromium.get(listed.url + "/?page=zero")
    assert "400" in chromium.find_element(By.TAG_NAME, "h1").text
    assert "not a page number" in chromium.page_source
    # The only console message is the failed load itself (a 400 is an error to a browser).
    assert all("400" in message for message in browser.console_messages(chromium))

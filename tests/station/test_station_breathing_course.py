"""Breathing, the dose in the lot's units and the course on the ward-station page, in
a real browser (Debian's Chromium via Playwright), fed by real controllers on
simulated heads over a private Mosquitto (issue 17 items left from issue 19).

bed-01 has a breath-aware (ICD 1.1) head and an open prescription: its tile shows the
breathing rate and the inspiratory-phase share, and the dose in vesicles; after its
run ends the detail view shows the last 24 h and the course so far. bed-02's
prescription is blinded: its tile says "blinded" where the dose would be, and its
course shows volumes, never a figure in drug units, and no byte it publishes
through a whole dose names the lot or a drug-unit figure. With STATION_SCREENSHOTS=1 the
detail view is saved to docs/station/ (how docs/station.md's picture is made)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from playwright.async_api import expect

from controller.telemetry import MqttSettings, mqtt_client
from tests.station._ward import running_ward, start_session
from tests.station.test_station_browser import shoot
from tests.support.browser import chromium
from tests.support.mosquitto import MosquittoBroker

pytestmark = pytest.mark.slow


async def test_tiles_show_breathing_and_dose_and_the_detail_view_the_course(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    async with (
        chromium() as browser,
        running_ward(
            tmp_path,
            mosquitto_broker,
            beds=2,
            breathing_beds=frozenset({1}),
            blinded_beds=frozenset({2}),
        ) as ward,
    ):
        page = await browser.new_page(viewport={"width": 1920, "height": 1080})
        await page.goto(ward.station.url)
        await expect(page.locator("#beds > article")).to_have_count(2, timeout=15_000)
        breathing_bed = page.locator("#beds > article", has_text="bed-01")
        blinded_bed = page.locator("#beds > article", has_text="bed-02")
        await expect(blinded_bed.locator(".dose")).to_have_text("blinded", timeout=10_000)
        await expect(blinded_bed.locator(".breath")).to_be_hidden()  # a version-1.0 head

        await start_session(ward.beds[0])
        await expect(breathing_bed.locator(".state")).to_have_text("nebulising", timeout=10_000)
        # Rate and inspiratory-phase share, from the bed's `breathing` message (every 10 s).
        await expect(breathing_bed.locator(".breath")).to_have_text(
            re.compile(r"^\d+/min · insp \d+ %$"), timeout=25_000
        )
        await expect(breathing_bed.locator(".dose")).to_have_text(
            re.compile(r"^\d\.\d\d×10⁷ vesicles$"), timeout=10_000
        )
        # The run ends at its cap (200 µL at 600 µL/min): the bed publishes its course.
        await expect(breathing_bed.locator(".bar em")).to_have_text(
            re.compile(r"^0\.(19|20) mL / 0\.20 mL$"), timeout=60_000
        )
        await expect(breathing_bed.locator(".state")).not_to_have_text("nebulising", timeout=30_000)
        # 200 µL of 2.0e8 vesicles per 3 mL.
        await expect(breathing_bed.locator(".dose")).to_have_text(
            re.compile(r"^1\.(2[7-9]|3[0-3])×10⁷ vesicles$")
        )

        await breathing_bed.locator("header").click()
        course = page.locator("#course")
        await expect(course.locator(".last24")).to_have_text(
            re.compile(r"^0\.(19|20) mL of 0\.60 mL \(1\.\d\d×10⁷ vesicles\) · 1 of 3 doses$"),
            timeout=15_000,
        )
        await expect(course.locator(".course-total")).to_contain_text("1 of 5 doses")
        await expect(course.locator(".days tr")).to_have_count(1)
        await expect(course.locator(".days tr")).to_contain_text("1 run")
        await shoot(page, "station-course.png")
        await page.click("#detail-close")

        await blinded_bed.locator("header").click()
        await expect(course.locator(".last24")).to_have_text(
            "0.00 mL of 0.60 mL · 0 of 3 doses", timeout=10_000
        )
        assert "vesicles" not in await course.inner_text()
        assert "vesicles" not in await blinded_bed.inner_text()


async def test_a_blinded_bed_publishes_volumes_but_no_drug_unit_figure(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    """Every byte a blinded bed publishes through a whole dose: its course arrives
    (volumes), and nothing names the lot, the drug, or a figure in drug units."""
    captured: list[tuple[str, bytes]] = []
    settings = MqttSettings(
        host=mosquitto_broker.host, port=mosquitto_broker.port, client_id="raw-capture"
    )
    async with (
        mqtt_client(settings, client_id="raw-capture") as client,
        running_ward(tmp_path, mosquitto_broker, beds=1, blinded_beds=frozenset({1})) as ward,
    ):
        await client.subscribe("nebuliser/v1/#", qos=1)

        async def read() -> None:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                captured.append((str(message.topic), payload))

        def course_ul() -> int:
            courses = [json.loads(p) for t, p in captured if t.endswith("/course")]
            return max((c["course_ul"] for c in courses), default=0)

        async with asyncio.TaskGroup() as group:
            reader = group.create_task(read())
            try:
                await start_session(ward.beds[0])
                async with asyncio.timeout(60):
                    while course_ul() < 190:  # noqa: ASYNC110 - the reader task fills `captured`
                        await asyncio.sleep(0.05)
            finally:
                reader.cancel()
    states = [json.loads(p) for t, p in captured if t.endswith("/state")]
    assert states
    assert all(s["prescription"]["blinded"] for s in states)
    # The lot (2.0e8 vesicles in 3 mL), its id, the drug's name, the arm and cohort.
    secrets = (
        *(b"vesicles", b"dose_unit", b"concentration", b"LOT-BENCH", b"exosome"),
        *(b'"active"', b"pilot", b"66666", b"2e8", b"2.0e8", b"200000000"),
    )
    for topic, payload in captured:
        for secret in secrets:
            assert secret not in payload, (secret, topic, payload[:300])

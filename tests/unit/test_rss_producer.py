"""The RSS producer's parsing, normalising and dedupe on recorded feeds (no sockets)."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from kafka_relay.client import SendResult
from producer_common import (
    Batch,
    ConfigError,
    Deadline,
    JsonLog,
    deliver,
    error_entry,
)
from rss_feed import (
    FeedError,
    FeedResponse,
    RssConfig,
    RssProducer,
    RssState,
    Validators,
    load_state,
    parse_feed,
    stable_key,
)

RSS = Path(__file__).resolve().parents[2] / "devtools" / "fixtures" / "rss"
BASE = "https://feeds.example.test/"
FETCHED_AT = "2024-05-01T12:10:00Z"
NOW = 1714565400.0  # 2024-05-01T12:10:00Z


def parse(name: str, **kwargs: Any) -> dict[str, dict[str, Any]]:
    parsed = parse_feed(
        (RSS / name).read_bytes(), source=BASE + name, fetched_at=FETCHED_AT, **kwargs
    )
    entries: dict[str, dict[str, Any]] = {}
    for item in parsed.items:
        entries.setdefault(item.key, item.value)  # the feed repeats one item; keep the first
    return entries


@dataclass
class RecordedFeeds:
    """Serves fixture files by URL, answering 304 to a matching ETag, like a feed server."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    asked: list[tuple[str, Validators | None]] = field(default_factory=list)

    def add(self, name: str, body: bytes | None = None) -> str:
        url = BASE + name
        self.bodies[url] = (RSS / name).read_bytes() if body is None else body
        return url

    def __call__(self, url: str, validators: Validators | None,
                 _deadline: Deadline) -> FeedResponse:
        self.asked.append((url, validators))
        if url in self.failures:
            return FeedResponse(url, error=self.failures[url])
        body = self.bodies[url]
        etag = '"' + hashlib.sha256(body).hexdigest()[:12] + '"'
        if validators is not None and validators.etag == etag:
            return FeedResponse(url, not_modified=True)
        return FeedResponse(url, body=body, content_type="application/rss+xml",
                            validators=Validators(etag, "Wed, 01 May 2024 12:05:00 GMT"))


def producer(feeds: RecordedFeeds, **config: Any) -> RssProducer:
    cfg = RssConfig(feed_urls=tuple(feeds.bodies) + tuple(feeds.failures), **config)
    return RssProducer(cfg, fetch=feeds, clock=lambda: NOW)


def quiet_log() -> tuple[JsonLog, io.StringIO]:
    stream = io.StringIO()
    return JsonLog("rss_producer", request_id="req-1", stream=stream), stream


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- parsing and normalising --------------------------------------------------------------


def test_rss2_entry_is_normalised_with_utc_date_and_plain_text_summary() -> None:
    entries = parse("world_news_rss2.xml")
    url = "https://news.example.com/world/2024/05/01/central-bank-holds"
    assert entries[url] == {
        "source": BASE + "world_news_rss2.xml",
        "guid": url,
        "title": "Central bank holds rates, signals two cuts this year",
        "link": url,
        "published_at": "2024-05-01T12:00:00Z",
        # tags and the <script> dropped, &amp; decoded, paragraphs separated by a space
        "summary": "The central bank kept its policy rate at 5.25% on Wednesday & said it "
                   "still expects two cuts. Markets rallied.",
        "fetched_at": FETCHED_AT,
    }
    assert entries["example-wire-88390"]["summary"] == "Shipping was halted at three ports."


def test_atom_entries_use_ids_resolve_relative_links_and_fall_back_to_updated() -> None:
    entries = parse("markets_atom.xml")
    oil = entries["tag:markets.example.org,2024:oil-jumps"]
    assert oil["title"] == "Oil jumps 3% on supply worries"  # type="html" title as text
    assert oil["link"] == "https://feeds.example.test/2024/05/01/oil-jumps"
    assert oil["published_at"] == "2024-05-01T13:45:00Z"  # 08:45 -05:00, not the update
    assert oil["summary"] == "Brent crude rose 3% after the cartel\u2019s meeting."
    tokyo = entries["tag:markets.example.org,2024:tokyo-tech"]
    assert tokyo["published_at"] == "2024-05-01T06:30:00Z"  # only <updated>, +09:00
    assert tokyo["summary"] == "Chipmakers led the decline < 2% overall."  # type="text" kept
    yields = entries["tag:markets.example.org,2024:yields"]
    assert yields["summary"] == "The 10-year yield fell to 4.1%."  # xhtml reduced to text


def test_dates_in_any_time_zone_become_utc_and_missing_dates_are_null() -> None:
    published = {key: v["published_at"] for key, v in parse("timezones_rss2.xml").items()}
    assert published == {
        "briefing-mumbai-1": "2024-05-01T10:15:00Z",  # 15:45 +0530
        "briefing-sf-1": "2024-05-01T07:30:00Z",  # 23:30 -0800 the day before
        "briefing-ny-1": "2024-05-01T13:30:00Z",  # 08:30 EST
        "briefing-la-1": "2024-05-01T12:00:00Z",  # 05:00 PDT
        "briefing-tokyo-1": "2024-05-01T13:10:00Z",  # dc:date 22:10 +09:00
        "briefing-london-1": "2024-05-01T10:00:00Z",  # GMT
        "briefing-notebook-1": None,
    }


def test_entries_without_guid_are_keyed_by_link_then_by_a_stable_hash() -> None:
    entries = parse("no_guids_rss2.xml")
    water = stable_key("Water supply interruption in the north district", "2024-05-01T04:30:00Z")
    cat = stable_key("Lost cat found near the station", None)
    assert list(entries) == [
        "https://bulletin.example.net/notices/road-works",
        "https://bulletin.example.net/notices/library-hours",
        water,
        cat,
    ]
    assert entries[water]["guid"] == water
    assert entries[water]["link"] is None
    assert water.startswith("sha256:")
    assert water != cat
    # the same item fetched later keeps its key
    later = parse_feed((RSS / "no_guids_rss2.xml").read_bytes(), source=BASE, fetched_at="x")
    assert [item.key for item in later.items] == list(entries)


def test_malformed_feed_raises_and_a_non_feed_is_refused() -> None:
    with pytest.raises(FeedError, match="not a well-formed feed"):
        parse("malformed.xml")
    with pytest.raises(FeedError, match="neither RSS nor Atom"):
        parse_feed(b"<html><body>Service moved</body></html>", source=BASE, fetched_at="x")


def test_feed_readable_up_to_a_defect_keeps_its_entries_with_a_warning() -> None:
    truncated = (RSS / "world_news_rss2.xml").read_bytes().split(b"<item>")
    body = b"<item>".join(truncated[:3])[:-40]  # two items, the second cut mid-way
    parsed = parse_feed(body, source=BASE, fetched_at="x")
    assert [item.key for item in parsed.items][:1] == [
        "https://news.example.com/world/2024/05/01/central-bank-holds"
    ]
    assert parsed.warning is not None


def test_summary_is_cut_to_the_configured_length() -> None:
    entries = parse("world_news_rss2.xml", summary_max_chars=20)
    summary = entries["https://news.example.com/world/2024/05/01/central-bank-holds"]["summary"]
    assert summary == "The central bank ke\u2026"
    assert len(summary) <= 20


# -- one run: errors, dedupe, state -------------------------------------------------------


def test_malformed_feed_is_reported_and_the_other_feeds_are_still_sent() -> None:
    feeds = RecordedFeeds()
    broken = feeds.add("malformed.xml")
    feeds.add("timezones_rss2.xml")
    feeds.failures[BASE + "slow.xml"] = error_entry(BASE + "slow.xml", "timeout", "ReadTimeout")
    log, stream = quiet_log()
    batch = producer(feeds).poll(log=log)
    assert len(batch.records) == 7
    assert {record["topic"] for record in batch.records} == {"rss.events"}
    assert [(e["source"], e["kind"]) for e in batch.errors] == [
        (broken, "malformed"), (BASE + "slow.xml", "timeout"),
    ]
    failed = [e for e in events(stream) if e["event"] == "feed.failed"]
    assert [(e["level"], e["request_id"], e["kind"]) for e in failed] == [
        ("WARNING", "req-1", "malformed"), ("WARNING", "req-1", "timeout"),
    ]


def test_a_repeated_item_in_one_run_is_sent_once() -> None:
    feeds = RecordedFeeds()
    feeds.add("world_news_rss2.xml")
    batch = producer(feeds).poll(log=quiet_log()[0])
    assert [r["key"] for r in batch.records] == [
        "https://news.example.com/world/2024/05/01/central-bank-holds",
        "example-wire-88412",
        "example-wire-88390",
    ]
    assert (batch.fetched, batch.skipped_duplicates) == (4, 1)


def test_items_sent_by_an_earlier_run_are_skipped_and_new_ones_sent() -> None:
    feeds = RecordedFeeds()
    url = feeds.add("world_news_rss2.xml")
    rss = producer(feeds)
    first = rss.poll(log=quiet_log()[0])
    first.commit()
    # the publisher adds a story (new ETag: fetched in full, old items seen before)
    original = feeds.bodies[url]
    new_item = (
        b"<item><title>Ceasefire talks resume</title>"
        b'<guid isPermaLink="false">example-wire-88500</guid>'

        b"<pubDate>Wed, 01 May 2024 13:00:00 +0200</pubDate></item>"
    )
    feeds.bodies[url] = original.replace(b"<item>", new_item + b"<item>", 1)
    second = rss.poll(log=quiet_log()[0])
    assert [r["key"] for r in second.records] == ["example-wire-88500"]
    assert second.records[0]["value"]["published_at"] == "2024-05-01T11:00:00Z"
    assert (second.fetched, second.skipped_duplicates) == (5, 4)


def test_the_same_guid_in_two_feeds_is_sent_for_each_feed() -> None:
    feeds = RecordedFeeds()
    world = (RSS / "world_news_rss2.xml").read_bytes()
    feeds.add("world_news_rss2.xml")
    feeds.add("mirror.xml", world)
    batch = producer(feeds).poll(log=quiet_log()[0])
    assert len(batch.records) == 6
    assert {r["value"]["source"] for r in batch.records} == {BASE + "world_news_rss2.xml",
                                                              BASE + "mirror.xml"}


def test_validators_of_a_200_are_sent_next_time_and_a_304_yields_nothing() -> None:
    feeds = RecordedFeeds()
    url = feeds.add("markets_atom.xml")
    rss = producer(feeds)
    rss.poll(log=quiet_log()[0]).commit()
    log, stream = quiet_log()
    again = rss.poll(log=log)
    assert feeds.asked[0] == (url, None)
    sent = feeds.asked[1][1]
    assert sent is not None
    assert sent.etag
    assert sent.last_modified
    assert (again.records, again.fetched, again.errors) == ([], 0, [])
    assert [e["event"] for e in events(stream)] == ["feed.not_modified"]


def test_nothing_is_remembered_when_the_handoff_fails() -> None:
    class RelayDown(Exception):
        pass

    def send(records: list[dict[str, Any]], /, *, wait: bool) -> Any:
        raise RelayDown("no extension listening")

    feeds = RecordedFeeds()
    feeds.add("timezones_rss2.xml")
    rss = producer(feeds)
    log, stream = quiet_log()
    with pytest.raises(RelayDown):
        deliver(rss.poll(log=log), send=send, wait=False, log=log)
    failed = [e for e in events(stream) if e["event"] == "run.handoff_failed"]
    assert failed[0]["level"] == "ERROR"
    assert failed[0]["fetched"] == 7
    # the next run neither sends conditional headers nor skips anything
    retry = rss.poll(log=log)
    assert feeds.asked[-1][1] is None
    assert (len(retry.records), retry.skipped_duplicates) == (7, 0)


def test_summary_counts_outcomes_when_waiting_for_delivery() -> None:
    def send(records: list[dict[str, Any]], /, *, wait: bool) -> SendResult:
        assert wait
        kinds = ["delivered"] * (len(records) - 1) + ["dead_lettered"]
        return SendResult(len(records), [str(i) for i in range(len(records))],
                          [{"id": str(i), "outcome": k} for i, k in enumerate(kinds)])

    feeds = RecordedFeeds()
    feeds.add("no_guids_rss2.xml")
    log, stream = quiet_log()
    summary = deliver(producer(feeds).poll(log=log), send=send, wait=True, log=log)
    assert summary == {
        "fetched": 4, "sent": 4, "failed": 0, "skipped_duplicates": 0, "errors": [],
        "delivered": 3, "dead_lettered": 1, "spilled": 0, "pending": 0,
    }
    (line,) = [e for e in events(stream) if e["event"] == "run.summary"]
    assert line["level"] == "INFO"
    assert line["sent"] == 4
    assert line["request_id"] == "req-1"


def test_dedupe_memory_forgets_older_runs_entries_first() -> None:
    feeds = RecordedFeeds()
    world = feeds.add("world_news_rss2.xml")
    rss = producer(feeds, dedupe_capacity=9)
    rss.poll(log=quiet_log()[0]).commit()
    feeds.bodies.pop(world)
    feeds.add("timezones_rss2.xml")
    rss.config = replace(rss.config, feed_urls=tuple(feeds.bodies))
    second = rss.poll(log=quiet_log()[0])
    second.commit()
    kept = [url for url, _ in rss.state.seen]
    assert len(second.records) == 7
    assert (len(kept), kept.count(world)) == (9, 2), "the older run's entries go first"
    assert kept[:2] == [world, world]


def test_a_run_larger_than_the_dedupe_capacity_is_remembered_whole_and_reported() -> None:
    """A big feed and a small one over the capacity: no warm run sends either again."""
    feeds = RecordedFeeds()
    feeds.add("timezones_rss2.xml")
    feeds.add("world_news_rss2.xml")
    rss = producer(feeds, dedupe_capacity=3)
    first = rss.poll(log=quiet_log()[0])
    first.commit()
    (report,) = [e for e in first.errors if e["kind"] == "dedupe_capacity"]
    assert "RSS_DEDUPE_CAPACITY=3" in report["error"]
    assert len(rss.state.seen) == report["entries"] == len(first.records)
    for _ in range(3):
        rss.state.validators.clear()  # fetch in full again: only the dedupe can skip entries
        again = rss.poll(log=quiet_log()[0])
        again.commit()
        assert again.records == []
        assert again.skipped_duplicates == first.fetched


def test_a_run_close_to_the_timeout_reports_feeds_it_did_not_fetch() -> None:
    feeds = RecordedFeeds()
    url = feeds.add("timezones_rss2.xml")
    batch = producer(feeds).poll(log=quiet_log()[0], deadline=Deadline(10.0, lambda: 11.0))
    assert batch.records == []
    assert feeds.asked == []
    assert [(e["source"], e["kind"]) for e in batch.errors] == [(url, "deadline")]


def test_state_file_survives_a_new_environment_and_a_corrupt_one_is_ignored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rss-state.json"
    feeds = RecordedFeeds()
    url = feeds.add("markets_atom.xml")
    first = producer(feeds, state_path=path)
    first.poll(log=quiet_log()[0]).commit()
    config = first.config
    log, stream = quiet_log()
    restored = RssProducer(config, fetch=feeds, state=load_state(config, log))
    assert restored.state.validators[url] == first.state.validators[url]
    assert restored.poll(log=log).records == []
    path.write_text("{not json", encoding="utf-8")
    empty = load_state(config, log)
    assert len(empty.seen) == 0
    assert empty.validators == {}
    assert events(stream)[-1]["event"] == "state.unreadable"
    assert "RSS_STATE_PATH" in events(stream)[-1]["error"]


def test_state_read_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    state = RssState.read(tmp_path / "none.json", capacity=5)
    assert (len(state.seen), state.validators, state.seen.capacity) == (0, {}, 5)


def test_empty_batch_still_commits_and_logs_a_summary() -> None:
    committed: list[bool] = []
    log, stream = quiet_log()
    batch = Batch(records=[], commit=lambda accepted=None, /: committed.append(True))
    summary = deliver(batch, send=lambda records, /, *, wait: pytest.fail("no send"),
                      wait=False, log=log)
    assert summary == {"fetched": 0, "sent": 0, "failed": 0, "skipped_duplicates": 0,
                       "errors": []}
    assert committed == [True]
    assert events(stream)[0]["event"] == "run.summary"


# -- configuration ------------------------------------------------------------------------


def test_feed_urls_come_as_a_comma_list_or_a_json_list() -> None:
    a, b = "https://a.example/rss.xml", "https://b.example/atom"
    assert RssConfig.from_env({"RSS_FEED_URLS": f" {a}, ,{b},{a}"}).feed_urls == (a, b)
    config = RssConfig.from_env({
        "RSS_FEED_URLS": json.dumps([a, b]),
        "KAFKA_TOPIC": "news.raw",
        "RSS_STATE_PATH": "/tmp/rss.json",
        "RSS_READ_TIMEOUT_S": "2.5",
        "RSS_MAX_RETRIES": "1",
        "RELAY_WAIT_DELIVERED": "true",
    })
    assert config.feed_urls == (a, b)
    assert (config.topic, config.state_path) == ("news.raw", Path("/tmp/rss.json"))
    assert (config.http.timeout, config.http.max_retries) == ((3.05, 2.5), 1)
    assert config.wait_delivered is True
    assert RssConfig.from_env({"RSS_FEED_URLS": a}).topic == "rss.events"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "RSS_FEED_URLS is not set"),
        ({"RSS_FEED_URLS": "ftp://a/feed"}, "RSS_FEED_URLS holds 'ftp://a/feed'"),
        ({"RSS_FEED_URLS": '["https://a/x", 3]'}, "RSS_FEED_URLS must be a JSON list"),
        ({"RSS_FEED_URLS": "[oops"}, "RSS_FEED_URLS starts with '\\['"),
        ({"RSS_FEED_URLS": "https://a/x", "RSS_READ_TIMEOUT_S": "soon"}, "RSS_READ_TIMEOUT_S="),
        ({"RSS_FEED_URLS": "https://a/x", "RSS_MAX_RETRIES": "99"}, "RSS_MAX_RETRIES=99"),
        ({"RSS_FEED_URLS": "https://a/x", "RELAY_WAIT_DELIVERED": "maybe"}, "RELAY_WAIT_DELIVERED"),
    ],
)
def test_bad_settings_name_the_variable_and_the_fix(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        RssConfig.from_env(env)


def test_deadline_keeps_the_handoff_reserve_but_at_most_a_quarter_of_the_time_left() -> None:
    @dataclass
    class Context:
        left_ms: int

        def get_remaining_time_in_millis(self) -> int:
            return self.left_ms

    clock = lambda: 1000.0  # noqa: E731 - a fixed clock
    assert Deadline.from_context(Context(300_000), reserve_s=20, clock=clock).at == 1280.0
    assert Deadline.from_context(Context(8_000), reserve_s=20, clock=clock).at == 1006.0
    assert Deadline.from_context(object(), reserve_s=20, clock=clock).at is None


def test_only_records_handed_over_are_remembered_and_their_feed_keeps_old_validators() -> None:
    feeds = RecordedFeeds()
    feeds.add("timezones_rss2.xml")
    feeds.add("no_guids_rss2.xml")
    rss = producer(feeds)
    log, stream = quiet_log()
    batch = rss.poll(log=log)
    lost_key = batch.records[0]["key"]  # the first feed's first entry is not delivered

    def send(records: list[dict[str, Any]], /, *, wait: bool) -> SendResult:
        outcomes = [{"id": str(i), "outcome": "failed" if i == 0 else "delivered"}
                    for i in range(len(records))]
        return SendResult(len(records) - 1, [str(i) for i in range(len(records))], outcomes,
                          failed=1)

    summary = deliver(batch, send=send, wait=False, log=log)
    assert (summary["sent"], summary["failed"]) == (10, 1)
    assert summary["errors"][0]["kind"] == "not_delivered"
    (line,) = [e for e in events(stream) if e["event"] == "run.summary"]
    assert line["level"] == "WARNING"
    retry = rss.poll(log=log)
    assert [r["key"] for r in retry.records] == [lost_key]
    asked = dict(feeds.asked[-2:])
    assert asked[BASE + "timezones_rss2.xml"] is None  # no 304 may hide the lost entry
    assert asked[BASE + "no_guids_rss2.xml"] is not None


def test_an_entry_that_cannot_be_normalised_is_skipped_and_reported(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    import rss_feed  # noqa: PLC0415 - the module whose entry step gets a fault injected

    real = rss_feed.entry_summary

    def odd_entry(entry: Any, max_chars: int) -> str | None:
        if entry.get("id") == "briefing-ny-1":
            raise TypeError("an entry shape nobody expected")
        return real(entry, max_chars)

    monkeypatch.setattr(rss_feed, "entry_summary", odd_entry)
    feeds = RecordedFeeds()
    url = feeds.add("timezones_rss2.xml")
    batch = producer(feeds).poll(log=quiet_log()[0])
    assert "briefing-ny-1" not in {r["key"] for r in batch.records}
    assert len(batch.records) == 6
    (bad,) = [e for e in batch.errors if e["kind"] == "bad_item"]
    assert (bad["source"], bad["items"]) == (url, 1)
    assert "an entry shape nobody expected" in bad["error"]

//! Conformance table for the SSE decoder: input bytes → expected events.
//!
//! The cases come from the WHATWG HTML "Server-sent events" section (its
//! examples and each interpretation rule) and from what the web-platform-tests
//! `eventsource/` suite feeds browsers (`format-*.js`, `event-data.js`,
//! `resources/last-event-id2.py`, ...). Every case is decoded whole, in every
//! split into two and (for short inputs) three chunks, byte by byte, and
//! through `EventStream`; all must give the same events.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use test_support::sse::{Decoded, decode_chunks};
use tower_ai_core::sse::{DecodeError, Decoder, Event, EventStream};

struct Case {
    name: &'static str,
    input: Vec<u8>,
    events: Vec<Event>,
    /// The decoder's reconnection time at the end, when checked.
    retry: Option<Option<u64>>,
    /// The decoder's last event ID buffer at the end, when checked.
    last_id: Option<Option<&'static str>>,
}

fn case(name: &'static str, input: impl AsRef<[u8]>, events: Vec<Event>) -> Case {
    Case {
        name,
        input: input.as_ref().to_vec(),
        events,
        retry: None,
        last_id: None,
    }
}

impl Case {
    fn retry(mut self, millis: Option<u64>) -> Self {
        self.retry = Some(millis);
        self
    }

    fn last_id(mut self, id: Option<&'static str>) -> Self {
        self.last_id = Some(id);
        self
    }
}

/// A dispatched event of type `message` with this data.
fn msg(data: &str) -> Event {
    Event::new().with_data(data)
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<Case> {
    let long = "x".repeat(2 * 1024);
    vec![
        // ---- WHATWG examples ----
        case(
            "spec: three messages, one with two data lines",
            "data: This is the first message.\n\ndata: This is the second message, it\ndata: has two lines.\n\ndata: This is the third message.\n\n",
            vec![
                msg("This is the first message."),
                msg("This is the second message, it\nhas two lines."),
                msg("This is the third message."),
            ],
        ),
        case(
            "spec: typed events",
            "event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
            vec![
                msg("73857293").with_event("add"),
                msg("2153").with_event("remove"),
                msg("113411").with_event("add"),
            ],
        ),
        case(
            "spec: stock ticker, data lines joined by LF",
            "data: YHOO\ndata: +2\ndata: 10\n\n",
            vec![msg("YHOO\n+2\n10")],
        ),
        case(
            "spec: comment, id set then reset by `id` alone, two leading spaces keep one",
            ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
            vec![
                msg("first event").with_id("1"),
                msg("second event").with_id(""),
                msg(" third event").with_id(""),
            ],
        ),
        case(
            "spec: empty data lines; the unfinished last event is discarded",
            "data\n\ndata\ndata\n\ndata:",
            vec![msg(""), msg("\n")],
        ),
        case(
            "spec: the space after the colon is optional",
            "data:test\n\ndata: test\n\n",
            vec![msg("test"), msg("test")],
        ),
        // ---- web-platform-tests eventsource/ ----
        case(
            "wpt format-bom: one BOM stripped, a BOM later is part of the field name",
            "\u{FEFF}data:1\n\n\u{FEFF}data:2\n\ndata:3\n\n\n",
            vec![msg("1"), msg("3")],
        ),
        case(
            "wpt format-bom-2: only the first of two BOMs is stripped",
            "\u{FEFF}\u{FEFF}data:1\n\ndata:2\n\ndata:3\n\n\n",
            vec![msg("2"), msg("3")],
        ),
        case(
            "wpt format-comments: comment fest with CR, LF, CRLF and long comments",
            format!(
                "data:1\r:\0\n:\r\ndata:2\n:{long}\rdata:3\n:data:fail\r:{long}\ndata:4\n\n"
            ),
            vec![msg("1\n2\n3\n4")],
        ),
        case(
            "wpt format-data-before-final-empty-line: id of the unfinished event never dispatched",
            "retry:1000\ndata:test1\n\nid:test\ndata:test2\n",
            vec![msg("test1").with_retry(ms(1000))],
        )
        .retry(Some(1000))
        .last_id(Some("test")),
        case(
            "wpt format-field-data: `data:` alone, `data` twice",
            "data:\n\ndata\ndata\n\ndata:test\n\n\n",
            vec![msg(""), msg("\n"), msg("test")],
        ),
        case(
            "wpt format-null-character: NUL in data is kept",
            "data:\0\n\n\n\n",
            vec![msg("\0")],
        ),
        case(
            "wpt format-field-event: custom type, then the type is reset",
            "event:test\ndata:x\n\ndata:x\n\n\n",
            vec![msg("x").with_event("test"), msg("x")],
        ),
        case(
            "wpt format-field-event-empty: `event: ` means message",
            "event: \ndata:data\n\n\n",
            vec![msg("data")],
        ),
        case(
            "wpt format-field-id-3: id persists",
            "id: 1\ndata: 1\n\ndata:2\n\n",
            vec![msg("1").with_id("1"), msg("2").with_id("1")],
        ),
        case(
            "wpt format-field-id-3: id changes and persists",
            "id: 1\ndata: 1\n\nid: 2\ndata:2\n\ndata:3\n\n",
            vec![
                msg("1").with_id("1"),
                msg("2").with_id("2"),
                msg("3").with_id("2"),
            ],
        ),
        case(
            "wpt format-field-id-3: `id:` resets it",
            "id: 1\ndata: 1\n\nid:\ndata:2\n\ndata:3\n\n",
            vec![
                msg("1").with_id("1"),
                msg("2").with_id(""),
                msg("3").with_id(""),
            ],
        ),
        case(
            "wpt format-field-id-2 / last-event-id: non-ASCII id with retry",
            "id: …\nretry: 200\ndata: hello\n\n",
            vec![msg("hello").with_id("…").with_retry(ms(200))],
        )
        .retry(Some(200)),
        case(
            "wpt format-field-id-null: an id containing NUL is ignored",
            "id: 1\ndata: a\n\nid: \0\0\ndata: b\n\nid: x\0y\ndata: c\n\n",
            vec![
                msg("a").with_id("1"),
                msg("b").with_id("1"),
                msg("c").with_id("1"),
            ],
        )
        .last_id(Some("1")),
        case(
            "wpt format-field-id-null: NUL id before any id leaves none",
            "id: \0\0\ndata: hello\n\n",
            vec![msg("hello")],
        )
        .last_id(None),
        case(
            "wpt format-field-retry: leading zeros are decimal",
            "retry:02000\ndata:x\n\n\n",
            vec![msg("x").with_retry(ms(2000))],
        )
        .retry(Some(2000)),
        case(
            "wpt format-field-retry-bogus: `1000x` is ignored",
            "retry:2000\nretry:1000x\ndata:x\n\n\n",
            vec![msg("x").with_retry(ms(2000))],
        )
        .retry(Some(2000)),
        case(
            "wpt format-utf-8: always UTF-8",
            b"data:ok\xE2\x80\xA6\n\n\n",
            vec![msg("ok…")],
        ),
        case(
            "wpt event-data (message2): lines and data parsing",
            "data:msg\ndata:msg\n\n:\nfalsefield:msg\n\nfalsefield:msg\nData:data\n\ndata\n\ndata:end\n\n",
            vec![msg("msg\nmsg"), msg(""), msg("end")],
        ),
        // ---- line ends ----
        case(
            "CR line ends",
            "data:a\rdata:b\r\rdata:c\r\r",
            vec![msg("a\nb"), msg("c")],
        ),
        case(
            "CRLF line ends",
            "data:a\r\ndata:b\r\n\r\ndata:c\r\n\r\n",
            vec![msg("a\nb"), msg("c")],
        ),
        case(
            "mixed line ends",
            "data:a\rdata:b\ndata:c\r\ndata:d\n\r\ndata:e\r\n\r",
            vec![msg("a\nb\nc\nd"), msg("e")],
        ),
        case(
            "LF CR is two line ends: the CR is a blank line",
            "data:a\n\rdata:b\n\n",
            vec![msg("a"), msg("b")],
        ),
        case(
            "CR CR LF: the CRLF after a CR is the blank line",
            "data:a\r\r\ndata:b\r\n\r\n",
            vec![msg("a"), msg("b")],
        ),
        case(
            "a CR-ended blank line dispatches without waiting for an LF",
            "data:a\r\r",
            vec![msg("a")],
        ),
        case("blank lines only", "\n\r\n\r\r\n\n", vec![]),
        case("empty input", "", vec![]),
        // ---- BOM ----
        case(
            "BOM then a blank line",
            "\u{FEFF}\ndata: x\n\n",
            vec![msg("x")],
        ),
        case("a BOM alone", "\u{FEFF}", vec![]),
        case(
            "BOM between events is not stripped",
            "data: a\n\n\u{FEFF}data: b\n\n",
            vec![msg("a")],
        ),
        case(
            "a BOM inside a value is kept",
            "data: \u{FEFF}x\n\n",
            vec![msg("\u{FEFF}x")],
        ),
        case(
            "a partial BOM is not a BOM: invalid UTF-8 in the field name",
            b"\xEF\xBBdata: x\n\ndata: y\n\n",
            vec![msg("y")],
        ),
        case(
            "a partial BOM before a line end",
            b"\xEF\ndata: y\n\n",
            vec![msg("y")],
        ),
        // ---- fields ----
        case(
            "one leading space removed, only one",
            "data:x\n\ndata: x\n\ndata:  x\n\ndata:   x \n\n",
            vec![msg("x"), msg("x"), msg(" x"), msg("  x ")],
        ),
        case(
            "a tab after the colon is kept",
            "data:\tx\n\n",
            vec![msg("\tx")],
        ),
        case(
            "`data: ` is empty data, still dispatched",
            "data: \n\n",
            vec![msg("")],
        ),
        case(
            "the value is everything after the first colon",
            "data: a:b\n\ndata::\n\ndata: :\n\n",
            vec![msg("a:b"), msg(":"), msg(":")],
        ),
        case(
            "field without colon is a name with an empty value",
            "data\n\nevent\ndata:x\n\nid: 1\nid\ndata:y\n\n",
            vec![msg(""), msg("x"), msg("y").with_id("")],
        ),
        case(
            "field names are exact: case, spaces and BOM matter",
            "Data: a\n\ndata : b\n\n data: c\n\nDATA\n\ndata\u{FEFF}: d\n\n",
            vec![],
        ),
        case(
            "unknown fields are ignored",
            "foo: bar\nevent2: x\nretries: 5\ndata: x\nidx: 9\n\n",
            vec![msg("x")],
        )
        .retry(None)
        .last_id(None),
        case(
            "comments anywhere are ignored",
            ": hello\ndata: a\n:\n: data: b\ndata: c\n:comment without space\n\n",
            vec![msg("a\nc")],
        ),
        case("comments alone dispatch nothing", ": hi\n\n:\n\n", vec![]),
        case(
            "data trailing empty line keeps one LF",
            "data: a\ndata:\n\ndata:\ndata: b\n\n",
            vec![msg("a\n"), msg("\nb")],
        ),
        case(
            "`data` three times is two LFs",
            "data\ndata\ndata\n\n",
            vec![msg("\n\n")],
        ),
        case(
            "the last event line wins for the type; an empty one resets it",
            "event: a\nevent: b\ndata: x\n\nevent: a\nevent:\ndata: y\n\nevent: a\nevent\ndata: z\n\n",
            vec![msg("x").with_event("b"), msg("y"), msg("z")],
        ),
        case(
            "no data: nothing dispatched and the type buffer reset",
            "event: e\n\ndata: x\n\nevent: f\nid: 3\nretry: 10\n\ndata: y\n\n",
            vec![msg("x"), msg("y").with_id("3")],
        )
        .retry(Some(10))
        .last_id(Some("3")),
        case(
            "an id-only block sets the id for later events",
            "id: 5\n\ndata: x\n\n",
            vec![msg("x").with_id("5")],
        ),
        case(
            "id keeps leading spaces beyond the first and any characters",
            "id:  1 2:3\ndata: x\n\n",
            vec![msg("x").with_id(" 1 2:3")],
        ),
        case(
            "the id in a block applies to that block's event, wherever it is",
            "data: x\nid: 7\n\n",
            vec![msg("x").with_id("7")],
        ),
        // ---- retry ----
        case(
            "retry on an event",
            "retry: 1000\ndata: x\n\ndata: y\n\n",
            vec![msg("x").with_retry(ms(1000)), msg("y")],
        )
        .retry(Some(1000)),
        case(
            "a retry-only block changes the reconnection time, dispatches nothing",
            "retry: 3000\n\ndata: x\n\n",
            vec![msg("x")],
        )
        .retry(Some(3000)),
        case(
            "retry: last valid one in the block",
            "retry: 1\nretry: 2\nretry: z\ndata: x\n\n",
            vec![msg("x").with_retry(ms(2))],
        )
        .retry(Some(2)),
        case(
            "bogus retry values are ignored",
            "retry:1x\nretry:  1\nretry:\nretry\nretry: 1.5\nretry: -1\nretry: +1\nretry: 1e3\nretry: 1 \nretry: \u{0661}\ndata: x\n\n",
            vec![msg("x")],
        )
        .retry(None),
        case(
            "retry 0 is valid",
            "retry: 0\ndata: x\n\n",
            vec![msg("x").with_retry(ms(0))],
        )
        .retry(Some(0)),
        case(
            "retry too large for u64 milliseconds saturates",
            "retry: 99999999999999999999999\ndata: x\n\n",
            vec![msg("x").with_retry(ms(u64::MAX))],
        )
        .retry(Some(u64::MAX)),
        // ---- end of input ----
        case("unfinished event: no blank line", "data: x\n", vec![]),
        case("unfinished event: no line end", "data: x", vec![]),
        case("unfinished event: CR-ended line", "data: x\r", vec![]),
        case(
            "unfinished event after complete ones",
            "data: x\n\ndata: y\nevent: e\n",
            vec![msg("x")],
        ),
        case(
            "an unfinished retry line is not applied",
            "data: x\n\nretry: 5",
            vec![msg("x")],
        )
        .retry(None),
        case(
            "a complete retry line at the end is applied",
            "retry: 5\n",
            vec![],
        )
        .retry(Some(5)),
        // ---- UTF-8 ----
        case(
            "multi-byte characters everywhere",
            "event: ünïcödé\nid: 日本\ndata: 日本語 🎉\n\n",
            vec![msg("日本語 🎉").with_event("ünïcödé").with_id("日本")],
        ),
        case(
            "invalid UTF-8 becomes U+FFFD",
            b"data: a\xFFb\ndata: \xE2\x82\ndata: \xF0\x9F\x8E\n\n",
            vec![msg("a\u{FFFD}b\n\u{FFFD}\n\u{FFFD}")],
        ),
        case(
            "invalid UTF-8 in type and id",
            b"event: \xC3\nid: \x80x\ndata: d\n\n",
            vec![msg("d").with_event("\u{FFFD}").with_id("\u{FFFD}x")],
        ),
        case(
            "a lone surrogate encoding is invalid: one U+FFFD per byte",
            b"data: \xED\xA0\x80\n\n",
            vec![msg("\u{FFFD}\u{FFFD}\u{FFFD}")],
        ),
        // ---- realistic ----
        case(
            "OpenAI-style chat stream",
            concat!(
                "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
                ": keep-alive\n\n",
                "data: {\"choices\":[{\"delta\":{\"content\":\" there\"}}]}\n\n",
                "data: [DONE]\n\n",
            ),
            vec![
                msg("{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}"),
                msg("{\"choices\":[{\"delta\":{\"content\":\" there\"}}]}"),
                msg("[DONE]"),
            ],
        ),
        case(
            "Anthropic-style typed stream with CRLF",
            "event: message_start\r\ndata: {\"type\":\"message_start\"}\r\n\r\nevent: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n",
            vec![
                msg("{\"type\":\"message_start\"}").with_event("message_start"),
                msg("{\"type\": \"ping\"}").with_event("ping"),
            ],
        ),
    ]
}

fn decode(chunks: &[&[u8]]) -> Decoded {
    decode_chunks(Decoder::new(), chunks.iter().copied())
}

fn check_expected(case: &Case, outcome: &Decoded) {
    let expected: Vec<Result<Event, DecodeError>> = case.events.iter().cloned().map(Ok).collect();
    assert_eq!(outcome.events, expected, "case {:?}", case.name);
    if let Some(retry) = case.retry {
        assert_eq!(outcome.retry, retry.map(ms), "retry, case {:?}", case.name);
    }
    if let Some(last_id) = case.last_id {
        assert_eq!(
            outcome.last_id.as_deref(),
            last_id,
            "last event ID, case {:?}",
            case.name
        );
    }
}

#[test]
fn whole_input() {
    for case in cases() {
        check_expected(&case, &decode(&[&case.input]));
    }
}

#[test]
fn every_split_in_two() {
    for case in cases() {
        let whole = decode(&[&case.input]);
        check_expected(&case, &whole);
        for at in 0..=case.input.len() {
            let (a, b) = case.input.split_at(at);
            assert_eq!(decode(&[a, b]), whole, "case {:?} split at {at}", case.name);
        }
    }
}

#[test]
fn every_split_in_three() {
    for case in cases().into_iter().filter(|case| case.input.len() <= 160) {
        let whole = decode(&[&case.input]);
        for i in 0..=case.input.len() {
            for j in i..=case.input.len() {
                let chunks = [&case.input[..i], &case.input[i..j], &case.input[j..]];
                assert_eq!(
                    decode(&chunks),
                    whole,
                    "case {:?} split at {i} and {j}",
                    case.name
                );
            }
        }
    }
}

#[test]
fn byte_by_byte() {
    for case in cases() {
        let chunks: Vec<&[u8]> = case.input.chunks(1).collect();
        check_expected(&case, &decode(&chunks));
    }
}

#[tokio::test]
async fn through_event_stream() {
    for case in cases() {
        for chunk_size in [1, 2, 3, 7, usize::MAX] {
            let chunks: Vec<Result<Bytes, std::convert::Infallible>> = case
                .input
                .chunks(chunk_size.min(case.input.len().max(1)))
                .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
                .collect();
            let mut events = EventStream::new(stream::iter(chunks));
            let mut got = Vec::new();
            while let Some(event) = events.next().await {
                got.push(event.map_err(|error| format!("{error}")));
            }
            let expected: Vec<Result<Event, String>> =
                case.events.iter().cloned().map(Ok).collect();
            assert_eq!(
                got, expected,
                "case {:?}, chunks of {chunk_size}",
                case.name
            );
            if let Some(retry) = case.retry {
                assert_eq!(
                    events.decoder().retry(),
                    retry.map(ms),
                    "case {:?}",
                    case.name
                );
            }
        }
    }
}

#[test]
fn event_accessors() {
    let outcome = decode(&[b"event: add\nid: 9\nretry: 15\ndata: a\ndata: b\n\ndata: c\n\n"]);
    let [Ok(first), Ok(second)] = &outcome.events[..] else {
        panic!("expected two events, got {:?}", outcome.events);
    };
    assert_eq!(first.event_type(), "add");
    assert_eq!(first.event(), Some("add"));
    assert_eq!(first.data(), "a\nb");
    assert_eq!(first.data_bytes(), b"a\nb");
    assert_eq!(first.id(), Some("9"));
    assert_eq!(first.retry(), Some(ms(15)));
    assert!(first.has_data());
    assert_eq!(first.comment(), None);
    assert_eq!(second.event_type(), "message");
    assert_eq!(second.event(), None);
    assert_eq!(second.id(), Some("9"));
    assert_eq!(second.retry(), None);
}

#[test]
fn last_event_id_can_be_seeded() {
    let mut decoder = Decoder::new().with_last_event_id("41");
    decoder.push(&b"data: a\n\nid: 42\ndata: b\n\n"[..]);
    let ids: Vec<_> = decoder
        .events()
        .map(|event| event.map(|event| event.id().map(str::to_owned)))
        .collect();
    assert_eq!(
        ids,
        vec![Ok(Some("41".to_owned())), Ok(Some("42".to_owned()))]
    );
}

#[test]
fn size_limit_reports_once_and_resumes() {
    let input = b"data: ok\n\ndata: 0123456789\ndata: more\nid: lost\nretry: 9\n\n: long comment: 0123456789\ndata: fine\n\n";
    for chunk_size in [1, 2, 5, input.len()] {
        let mut decoder = Decoder::new().with_max_event_size(12);
        let mut events = Vec::new();
        for chunk in input.chunks(chunk_size) {
            decoder.push_slice(chunk);
            events.extend(decoder.events());
        }
        assert_eq!(
            events,
            vec![
                Ok(msg("ok")),
                Err(DecodeError::EventTooLarge { limit: 12 }),
                Ok(msg("fine")),
            ],
            "chunks of {chunk_size}"
        );
        assert_eq!(decoder.retry(), None);
        assert_eq!(decoder.last_event_id(), None);
    }
}

#[test]
fn size_limit_counts_data_of_all_lines() {
    // 3 + 1 + 3 + 1 = 8 bytes of data buffer, then a 7-byte line is too much.
    let input = b"data:abc\ndata:def\ndata:gh\n\n";
    let mut decoder = Decoder::new().with_max_event_size(14);
    decoder.push(&input[..]);
    assert_eq!(
        decoder.next_event(),
        Some(Err(DecodeError::EventTooLarge { limit: 14 }))
    );
    assert_eq!(decoder.next_event(), None);
    let mut decoder = Decoder::new().with_max_event_size(15);
    decoder.push(&input[..]);
    assert_eq!(decoder.next_event(), Some(Ok(msg("abc\ndef\ngh"))));
}

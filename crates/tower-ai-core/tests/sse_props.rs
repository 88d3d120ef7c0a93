//! Property tests for the SSE codec: split invariance, agreement with a
//! naive spec-literal reference parser, and encode → decode round trips.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use test_support::sse::{Decoded, decode_chunks};
use tower_ai_core::sse::{DecodeError, Decoder, EncodeError, Event, encode};

fn decode_whole(input: &[u8]) -> Decoded {
    decode_chunks(Decoder::new(), [input])
}

/// Cuts `input` at the given positions (in any order, repeats allowed).
fn split<'a>(input: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|cut| cut.index(input.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for end in at {
        chunks.push(&input[start..end]);
        start = end;
    }
    chunks.push(&input[start..]);
    chunks
}

/// The WHATWG interpretation rules, written as literally and naively as
/// possible: decode the whole input, strip one BOM, cut lines, apply fields.
fn reference(input: &[u8]) -> Decoded {
    let text = String::from_utf8_lossy(input);
    let mut rest = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
    let mut lines = Vec::new();
    while let Some(end) = rest.find(['\r', '\n']) {
        lines.push(&rest[..end]);
        rest = if rest[end..].starts_with("\r\n") {
            &rest[end + 2..]
        } else {
            &rest[end + 1..]
        };
    }
    // `rest` is an unfinished line: discarded at the end of the stream.

    let mut events = Vec::new();
    let (mut data, mut event_type) = (String::new(), String::new());
    let mut last_id: Option<String> = None;
    let (mut retry, mut block_retry) = (None, None);
    for line in lines {
        if line.is_empty() {
            let block_retry = block_retry.take();
            if data.is_empty() {
                event_type.clear();
                continue;
            }
            if data.ends_with('\n') {
                data.pop();
            }
            let mut event = Event::new()
                .with_data(std::mem::take(&mut data))
                .with_event(std::mem::take(&mut event_type));
            if let Some(id) = &last_id {
                event = event.with_id(id.clone());
            }
            if let Some(retry) = block_retry {
                event = event.with_retry(retry);
            }
            events.push(Ok(event));
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "event" => event_type = value.to_owned(),
            // An id containing NUL is ignored.
            "id" if !value.contains('\0') => last_id = Some(value.to_owned()),
            // Only ASCII digits make a retry; anything else is ignored.
            "retry" if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) => {
                let millis = value.bytes().fold(0_u64, |millis, digit| {
                    millis
                        .saturating_mul(10)
                        .saturating_add(u64::from(digit - b'0'))
                });
                retry = Some(Duration::from_millis(millis));
                block_retry = retry;
            }
            _ => {}
        }
    }
    Decoded {
        events,
        retry,
        last_id,
    }
}

/// Pieces of field values: ASCII, colons and spaces, multi-byte characters,
/// a BOM, NUL, digits, and invalid or truncated UTF-8.
fn value_piece() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(vec![
        &b"a"[..],
        b"xyz",
        b" ",
        b":",
        b"1",
        b"0",
        "é".as_bytes(),
        "日本".as_bytes(),
        "🎉".as_bytes(),
        "\u{FEFF}".as_bytes(),
        b"\0",
        b"\xFF",
        b"\xE2\x82",
        b"\xF0\x9F",
        b"\x80",
    ])
}

fn line() -> impl Strategy<Value = Vec<u8>> {
    let name = prop::sample::select(vec![
        &b"data"[..],
        b"data",
        b"data",
        b"event",
        b"id",
        b"retry",
        b"",
        b"Data",
        b"dat",
        b"foo",
        "\u{FEFF}data".as_bytes(),
    ]);
    let separator = prop::sample::select(vec![&b":"[..], b": ", b":  ", b"", b" :"]);
    let value = prop::collection::vec(value_piece(), 0..5);
    prop_oneof![
        6 => (name, separator, value).prop_map(|(name, separator, value)| {
            let mut line = [name, separator].concat();
            line.extend(value.concat());
            line
        }),
        2 => Just(Vec::new()),
        1 => prop::collection::vec(value_piece(), 0..4)
            .prop_map(|value| [b":".to_vec(), value.concat()].concat()),
        1 => "[0-9]{0,4}[x ]?".prop_map(|digits| format!("retry: {digits}").into_bytes()),
    ]
}

fn line_end() -> impl Strategy<Value = &'static [u8]> {
    prop::sample::select(vec![&b"\n"[..], b"\r", b"\r\n"])
}

/// A random event stream: a start of zero, one or two BOMs, or a partial
/// one, lines with mixed line ends, and maybe an unfinished last line.
fn event_stream() -> impl Strategy<Value = Vec<u8>> {
    let start = prop::sample::select(vec![
        &b""[..],
        b"",
        b"\xEF\xBB\xBF",
        b"\xEF\xBB\xBF\xEF\xBB\xBF",
        b"\xEF",
        b"\xEF\xBB",
        b"\xEF\xBB\xBF\xEF\xBB",
    ]);
    (
        start,
        prop::collection::vec((line(), line_end()), 0..24),
        prop::option::of(line()),
    )
        .prop_map(|(start, lines, tail)| {
            let mut input = start.to_vec();
            for (line, end) in lines {
                input.extend(line);
                input.extend_from_slice(end);
            }
            input.extend(tail.unwrap_or_default());
            input
        })
}

/// Bytes drawn mostly from what matters to the parser.
fn noisy_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(b"\r\n\r\n: dataeventidretry0123\xEF\xBB\xBF\xFF\0".to_vec()),
            1 => any::<u8>(),
        ],
        0..200,
    )
}

/// The data a parser gives back for `data`: every line break becomes LF.
fn normalize_line_breaks(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

proptest! {
    #[test]
    fn any_split_gives_the_same_events(
        input in event_stream(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let whole = decode_whole(&input);
        prop_assert_eq!(decode_chunks(Decoder::new(), split(&input, &cuts)), whole);
    }

    #[test]
    fn matches_the_reference_parser(input in event_stream()) {
        prop_assert_eq!(decode_whole(&input), reference(&input));
    }

    #[test]
    fn noisy_bytes_match_the_reference_in_any_split(
        input in noisy_bytes(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let expected = reference(&input);
        prop_assert_eq!(decode_whole(&input), expected);
        let byte_by_byte = decode_chunks(Decoder::new(), input.chunks(1));
        prop_assert_eq!(&byte_by_byte, &reference(&input));
        prop_assert_eq!(decode_chunks(Decoder::new(), split(&input, &cuts)), byte_by_byte);
    }

    #[test]
    fn size_limit_errors_do_not_depend_on_splits(
        input in event_stream(),
        limit in 0..40_usize,
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let whole = decode_chunks(Decoder::new().with_max_event_size(limit), [&input[..]]);
        let chunks = split(&input, &cuts);
        prop_assert_eq!(decode_chunks(Decoder::new().with_max_event_size(limit), chunks), whole);
    }

    #[test]
    fn encode_then_decode_round_trips(
        events in prop::collection::vec(
            (
                prop_oneof![any::<String>(), "[a \r\n:é\u{FEFF}]{0,12}"],
                "[^\r\n]{0,8}",
                prop::option::of("[^\r\n\0]{0,8}"),
                prop::option::of(0..100_000_u64),
                prop::option::of("[^\r\n]{0,8}"),
            ),
            1..6,
        ),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        let mut last_id = None;
        for (data, event_type, id, retry, comment) in events {
            let mut event = Event::new().with_data(data.clone()).with_event(event_type.clone());
            let mut decoded = Event::new()
                .with_data(normalize_line_breaks(&data))
                .with_event(event_type);
            if let Some(id) = id {
                event = event.with_id(id.clone());
                last_id = Some(id);
            }
            if let Some(id) = &last_id {
                decoded = decoded.with_id(id.clone());
            }
            if let Some(millis) = retry {
                event = event.with_retry(Duration::from_millis(millis));
                decoded = decoded.with_retry(Duration::from_millis(millis));
            }
            if let Some(comment) = comment {
                event = event.with_comment(comment);
            }
            prop_assert_eq!(encode(&event, &mut wire), Ok(()));
            expected.push(Ok(decoded));
        }
        let outcome = decode_chunks(Decoder::new(), split(&wire, &cuts));
        prop_assert_eq!(outcome.events, expected);
    }

    #[test]
    fn encode_refuses_exactly_what_cannot_be_one_line(
        event_type in "[a\r\n\0]{0,4}",
        id in "[a\r\n\0]{0,4}",
        comment in "[a\r\n\0]{0,4}",
    ) {
        let breaks = |value: &str| value.contains(['\r', '\n']);
        let event = Event::new()
            .with_data("x")
            .with_event(event_type.clone())
            .with_id(id.clone())
            .with_comment(comment.clone());
        let mut wire = BytesMut::new();
        let result = encode(&event, &mut wire);
        if breaks(&comment) {
            prop_assert_eq!(result, Err(EncodeError::LineBreakInComment));
        } else if breaks(&event_type) {
            prop_assert_eq!(result, Err(EncodeError::LineBreakInEventType));
        } else if breaks(&id) {
            prop_assert_eq!(result, Err(EncodeError::LineBreakInId));
        } else if id.contains('\0') {
            prop_assert_eq!(result, Err(EncodeError::NulInId));
        } else {
            prop_assert_eq!(result, Ok(()));
            let outcome = decode_whole(&wire);
            let expected = Event::new().with_data("x").with_event(event_type).with_id(id);
            prop_assert_eq!(outcome.events, vec![Ok(expected)]);
        }
        if result.is_err() {
            prop_assert!(wire.is_empty());
        }
    }
}

/// An 8 MiB single-line `data:` event in 1,024 chunks parses to the right
/// event. (Its speed is measured by the `sse` bench: the decoder scans each
/// byte once, where a parser that re-scans its buffer per chunk does ~4 GB of
/// work here.)
#[test]
fn eight_megabyte_line_in_1024_chunks() {
    const SIZE: usize = 8 * 1024 * 1024;
    let payload: Vec<u8> = (0..SIZE)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
        .collect();
    let mut input = b"data: ".to_vec();
    input.extend_from_slice(&payload);
    input.extend_from_slice(b"\r\n\r\ndata: after\n\n");
    let input = Bytes::from(input);

    let mut decoder = Decoder::new();
    let mut events = Vec::new();
    let chunk_size = input.len().div_ceil(1024);
    let mut chunks = 0;
    for start in (0..input.len()).step_by(chunk_size) {
        decoder.push(input.slice(start..(start + chunk_size).min(input.len())));
        events.extend(decoder.events());
        chunks += 1;
    }
    decoder.finish();
    events.extend(decoder.events());

    assert_eq!(chunks, 1024);
    assert_eq!(events.len(), 2);
    let first = events[0].as_ref().map(Event::data_bytes);
    assert!(first == Ok(&payload[..]), "the 8 MiB data differs");
    assert_eq!(events[1].as_ref().map(Event::data), Ok("after"));

    // Past the limit: one error, then the next event.
    let mut decoder = Decoder::new().with_max_event_size(SIZE / 2);
    let mut events = Vec::new();
    for start in (0..input.len()).step_by(chunk_size) {
        decoder.push(input.slice(start..(start + chunk_size).min(input.len())));
        events.extend(decoder.events());
    }
    assert_eq!(
        events,
        vec![
            Err(DecodeError::EventTooLarge { limit: SIZE / 2 }),
            Ok(Event::new().with_data("after")),
        ]
    );
}

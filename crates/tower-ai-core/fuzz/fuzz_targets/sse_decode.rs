//! Fuzzes the SSE decoder: arbitrary bytes, split at fuzzer-chosen points,
//! must give the same events as the unsplit input (with and without a small
//! size limit), without panicking; and re-encoding the decoded events must
//! decode to the same events again.
//!
//! Input layout: byte 0 is the number of cuts (mod 16), byte 1 a size limit
//! (0 means the default), then two bytes per cut (a position, little-endian,
//! taken modulo the stream length + 1), then the stream itself. Any byte
//! string is a valid input.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tower_ai_core::sse::{DecodeError, Decoder, Event};

#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<Result<Event, DecodeError>>,
    retry: Option<std::time::Duration>,
    last_id: Option<String>,
    mid_event: bool,
}

fn decode(limit: Option<usize>, chunks: &[&[u8]]) -> Outcome {
    let mut decoder = Decoder::new();
    if let Some(limit) = limit {
        decoder = decoder.with_max_event_size(limit);
    }
    let mut events = Vec::new();
    for chunk in chunks {
        decoder.push(Bytes::copy_from_slice(chunk));
        events.extend(decoder.events());
    }
    let mid_event = decoder.is_mid_event();
    decoder.finish();
    events.extend(decoder.events());
    Outcome {
        events,
        retry: decoder.retry(),
        last_id: decoder.last_event_id().map(str::to_owned),
        mid_event,
    }
}

fuzz_target!(|data: &[u8]| {
    let [cut_count, limit, rest @ ..] = data else {
        return;
    };
    let cut_count = usize::from(cut_count % 16);
    let limit = (*limit != 0).then_some(usize::from(*limit));
    let Some((cut_bytes, stream)) = rest.split_at_checked(cut_count * 2) else {
        return;
    };

    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|pair| usize::from(u16::from_le_bytes([pair[0], pair[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut chunks = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for end in cuts {
        chunks.push(&stream[start..end]);
        start = end;
    }
    chunks.push(&stream[start..]);

    for limit in [None, limit] {
        let whole = decode(limit, &[stream]);
        assert_eq!(decode(limit, &chunks), whole, "split changed the events");
        if stream.len() <= 4096 {
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(
                decode(limit, &bytes),
                whole,
                "byte by byte changed the events"
            );
        }
    }

    // Decoded events re-encode without error and decode to themselves.
    let whole = decode(None, &[stream]);
    let mut wire = BytesMut::new();
    let mut events = Vec::new();
    for event in whole.events.into_iter().flatten() {
        assert_eq!(
            event.encode(&mut wire),
            Ok(()),
            "a decoded event must encode"
        );
        events.push(Ok(event));
    }
    assert_eq!(
        decode(None, &[&wire]).events,
        events,
        "re-encoding changed the events"
    );
});

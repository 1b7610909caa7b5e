//! CRI parsing, joining and the selection options (tail, since, limit, timestamps).

use super::*;

const LOG: &str = "\
2024-05-01T10:00:00.000000001Z stdout F one
2024-05-01T10:00:01.000000000Z stderr F two
2024-05-01T10:00:02.500000000Z stdout P thr
2024-05-01T10:00:02.600000000Z stderr F interleaved
2024-05-01T10:00:02.700000000Z stdout F ee
2024-05-01T10:00:03.000000000Z stdout F 
garbage line
2024-05-01T10:00:04.000000000Z stdout P tail
";

#[test]
fn parses_cri_lines() {
    let e = parse_cri_line(b"2024-05-01T10:00:00.5Z stderr P a b  c").unwrap();
    assert_eq!(e.stream, Stream::Stderr);
    assert!(e.partial);
    assert_eq!(e.content, b"a b  c");
    assert_eq!(e.time.to_string(), "2024-05-01T10:00:00.5Z");
    let empty = parse_cri_line(b"2024-05-01T10:00:00Z stdout F").unwrap();
    assert!(empty.content.is_empty());
    let tagged = parse_cri_line(b"2024-05-01T10:00:00Z stdout F:x y").unwrap();
    assert_eq!(tagged.content, b"y");
    assert!(parse_cri_line(b"nonsense").is_none());
    assert!(parse_cri_line(b"2024-05-01T10:00:00Z stdin F x").is_none());
    assert!(parse_cri_line(b"2024-05-01T10:00:00Z stdout X x").is_none());
}

#[test]
fn joins_partials_per_stream() {
    let mut j = Joiner::default();
    let mut out = Vec::new();
    for raw in LOG.lines() {
        if let Some(e) = parse_cri_line(raw.as_bytes())
            && let Some(l) = j.push(e)
        {
            out.push(l);
        }
    }
    let texts: Vec<&[u8]> = out.iter().map(|l| l.content.as_slice()).collect();
    assert_eq!(
        texts,
        vec![&b"one"[..], b"two", b"interleaved", b"three", b""]
    );
    // The joined line keeps its first part's time.
    assert_eq!(out[3].time.to_string(), "2024-05-01T10:00:02.5Z");
    let left = j.finish();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].content, b"tail");
    assert!(!left[0].complete);
    assert_eq!(left[0].render(false), b"tail");
    assert_eq!(out[0].render(true), b"2024-05-01T10:00:00.000000001Z one\n");
}

fn pairs(q: &str) -> Vec<(String, String)> {
    query::parse(q)
}

#[test]
fn options_from_query() {
    let now: Timestamp = "2024-05-01T10:00:10Z".parse().unwrap();
    let o =
        LogOptions::from_query(&pairs("tailLines=2&timestamps=true&sinceSeconds=5"), now).unwrap();
    assert_eq!(o.tail_lines, Some(2));
    assert!(o.timestamps);
    assert_eq!(o.since.unwrap().to_string(), "2024-05-01T10:00:05Z");
    let o =
        LogOptions::from_query(&pairs("tailLines=-1&sinceTime=2024-05-01T10:00:01Z"), now).unwrap();
    assert_eq!(o.tail_lines, None);
    assert_eq!(o.since.unwrap().to_string(), "2024-05-01T10:00:01Z");
    for bad in [
        "tailLines=x",
        "limitBytes=0",
        "sinceSeconds=0",
        "sinceSeconds=1&sinceTime=2024-05-01T10:00:01Z",
        "sinceTime=yesterday",
        "follow=maybe",
    ] {
        assert!(LogOptions::from_query(&pairs(bad), now).is_err(), "{bad}");
    }
}

async fn collect(opts: LogOptions) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    std::fs::write(&path, LOG).unwrap();
    let reader = CriReader::open(&path).await.unwrap();
    let (tx, mut rx) = mpsc::channel(BODY_QUEUE);
    let emitter = Emitter {
        opts,
        written: 0,
        chunk: Vec::new(),
        tx,
    };
    tokio::spawn(produce(reader, emitter, None));
    let mut out = Vec::new();
    while let Some(chunk) = rx.recv().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn selection() {
    let all = collect(LogOptions::default()).await;
    assert_eq!(all, "one\ntwo\ninterleaved\nthree\n\ntail");
    let tail = collect(LogOptions {
        tail_lines: Some(3),
        ..Default::default()
    })
    .await;
    assert_eq!(tail, "three\n\ntail");
    let none = collect(LogOptions {
        tail_lines: Some(0),
        ..Default::default()
    })
    .await;
    assert_eq!(none, "");
    let since = collect(LogOptions {
        since: Some("2024-05-01T10:00:02.6Z".parse().unwrap()),
        ..Default::default()
    })
    .await;
    // "three" started at 02.5: before the cut.
    assert_eq!(since, "interleaved\n\ntail");
    let limited = collect(LogOptions {
        limit_bytes: Some(6),
        ..Default::default()
    })
    .await;
    assert_eq!(limited, "one\ntw");
    let stamped = collect(LogOptions {
        timestamps: true,
        tail_lines: Some(2),
        ..Default::default()
    })
    .await;
    assert_eq!(stamped, "2024-05-01T10:00:03Z \n2024-05-01T10:00:04Z tail");
}

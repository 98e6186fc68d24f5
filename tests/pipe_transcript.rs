//! Replays the transcript of docs/pipe-protocol.md against a fresh registry, byte for byte.

mod common;
use common::*;
use std::time::Duration;

/// The `C:`/`S:` lines of the fenced block under `## Transcript`.
fn transcript() -> Vec<(char, String)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/pipe-protocol.md"
    ))
    .expect("docs/pipe-protocol.md exists");
    let section = doc
        .split("\n## Transcript")
        .nth(1)
        .expect("the guide has a Transcript section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the Transcript section has a fenced block");
    block
        .lines()
        .filter_map(|line| {
            let (who, text) = line.split_once(": ")?;
            match who {
                "C" => Some(('C', text.to_string())),
                "S" => Some(('S', text.to_string())),
                _ => None,
            }
        })
        .collect()
}

#[tokio::test]
async fn the_documented_transcript_replays_exactly() {
    let lines = transcript();
    assert!(lines.len() >= 20, "the transcript is substantial");
    let app = TestApp::start().await;
    let mut pipe = app.pipe().await;
    let mut sid = String::from("SID");
    for (who, text) in lines {
        match who {
            'C' => pipe.send(&text.replace("SID", &sid)).await,
            _ => {
                let got = pipe.recv().await;
                if text == "ACK|SID" {
                    sid = got
                        .strip_prefix("ACK|")
                        .unwrap_or_else(|| panic!("expected ACK|<sid>, got {got}"))
                        .to_string();
                    continue;
                }
                assert_eq!(got, text.replace("SID", &sid));
            }
        }
    }
    assert!(
        pipe.closed_within(Duration::from_secs(5)).await,
        "CLIENT_SHUTDOWN closes the connection"
    );
}
